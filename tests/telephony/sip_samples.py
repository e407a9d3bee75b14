"""Access to the SIP messages under tests/data/sip (kept byte-exact, CRLF line endings)."""

from __future__ import annotations

from pathlib import Path

SIP_DATA = Path(__file__).resolve().parents[1] / "data" / "sip"


def load_sip(name: str) -> bytes:
    return (SIP_DATA / name).read_bytes()


def sample_names() -> list[str]:
    return sorted(path.name for path in SIP_DATA.glob("*.txt"))


def sdp_body(name: str) -> bytes:
    """The body of a sample message (everything after the blank line)."""
    return load_sip(name).split(b"\r\n\r\n", 1)[1]
