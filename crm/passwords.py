"""Password hashing for admin logins with the standard library's scrypt.

A hash is stored as `scrypt$<n>$<r>$<p>$<salt b64>$<key b64>`, so the cost can be raised later without
invalidating existing hashes: verification reads the parameters from the stored string.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

# n=2**14, r=8 uses 16 MiB and ~50 ms here: slow for a guesser, fine for a login form.
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_KEY_BYTES: Final = 32
_MAX_MEMORY: Final = 64 * 1024 * 1024
MIN_PASSWORD_LENGTH: Final = 8


class WeakPassword(ValueError):
    """The chosen password is too short to be accepted."""


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=_KEY_BYTES
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches; False for a mismatch or a malformed stored hash."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        key = _derive(password, salt, n, r, p)
    except ValueError:
        return False
    return hmac.compare_digest(key, expected)
