"""SIP (RFC 3261): sans-IO message handling in `message`, the asyncio user agent in `ua`."""

from telephony.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    SipUsageError,
    Via,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    parse_cseq,
    parse_message,
)

__all__ = [
    "Headers",
    "NameAddr",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "SipUsageError",
    "Via",
    "generate_branch",
    "generate_call_id",
    "generate_tag",
    "make_response",
    "parse_cseq",
    "parse_message",
]
