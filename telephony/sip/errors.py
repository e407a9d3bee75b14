"""Errors of the SIP layer, split by who is at fault (the peer vs. our own code)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telephony.sip.message import SipRequest


class SipParseError(Exception):
    """The peer sent something that is not a valid SIP message (RFC 3261 section 16.3 / 8.2)."""

    def __init__(self, status: int, reason: str, partial: SipRequest | None = None) -> None:
        # The reason goes verbatim into a status line, so it must never be able to inject a header.
        self.status = status
        self.reason = " ".join(reason.split()) or "Bad Request"
        self.partial = partial
        super().__init__(f"{status} {self.reason}")


class SipUsageError(ValueError):
    """Our own code built something that cannot be put on the wire (a bug on this side)."""
