"""`X-Twilio-Signature` checks for the webhooks and the Media Streams WebSocket handshake.

Twilio signs each request with HMAC-SHA1 of the URL it requested followed by the sorted POST parameters,
keyed with the account's auth token; the SDK's `RequestValidator` computes and compares it. Two details
decide whether a signature can ever match behind a proxy or tunnel:

- the URL must be the one Twilio used (`SWITCHBOARD_PUBLIC_URL` + path + query), not the one uvicorn
  sees (http://127.0.0.1:8080/...);
- the WebSocket handshake is a GET to the `<Stream url>` we handed out (wss://...), signed with no
  parameters, so its URL has the ws/wss scheme.

An unset auth token rejects everything: a forgotten setting must not open the webhooks to anyone.
Skipping the check takes an explicit development setting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

__all__ = ["SIGNATURE_HEADER", "FormParams", "SignatureCheck", "public_url_for", "websocket_base"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"


class FormParams(dict[str, list[str]]):
    """POST parameters with repeated names kept (Twilio signs every value); `getlist` is what
    RequestValidator looks for on multi-valued mappings."""

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> FormParams:
        params = cls()
        for name, value in pairs:
            params.setdefault(name, []).append(value)
        return params

    def getlist(self, name: str) -> list[str]:
        return list(self.get(name, []))

    def first(self, name: str) -> str | None:
        values = self.get(name)
        return values[0] if values else None


def websocket_base(http_base: str) -> str:
    """The ws(s):// form of an http(s):// base URL (an already ws(s):// URL is returned as is)."""
    parts = urlsplit(http_base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def public_url_for(public_base: str | None, seen_url: str, *, websocket: bool = False) -> str:
    """The URL Twilio requested: the public base with the path and query of the request as seen here."""
    if not public_base:
        return seen_url
    seen = urlsplit(seen_url)
    base = urlsplit(websocket_base(public_base) if websocket else public_base)
    path = base.path.rstrip("/") + seen.path
    return urlunsplit((base.scheme, base.netloc, path, seen.query, ""))


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    auth_token: str | None
    enforce: bool = True  # False only with the explicit development setting

    def __post_init__(self) -> None:
        if self.enforce and not self.auth_token:
            log.info("TWILIO_AUTH_TOKEN is not set: Twilio requests will be refused (403)")
        if not self.enforce:
            log.warning("Twilio signature validation is OFF (development setting): do not expose this")

    def is_valid(self, url: str, params: Mapping[str, list[str]] | None, signature: str | None) -> bool:
        """True if the request carries a signature of `url` + `params` made with our auth token."""
        if not self.enforce:
            return True
        if not self.auth_token or not signature:
            return False
        validator = RequestValidator(self.auth_token)
        valid: bool = validator.validate(url, FormParams(params or {}), signature)
        return valid

    def sign(self, url: str, params: Mapping[str, list[str]] | None = None) -> str:
        """The signature Twilio would send (for tests and tools that play Twilio's part)."""
        if not self.auth_token:
            raise ValueError("no auth token to sign with")
        signature: str = RequestValidator(self.auth_token).compute_signature(url, FormParams(params or {}))
        return signature
