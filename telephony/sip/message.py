"""RFC 3261 SIP messages: parse one datagram into a request or response, and serialise them back. No I/O.

Everything the peer can get wrong surfaces as `SipParseError` (status hint + reason phrase, and where the
request is intact enough, a `partial` request to build the error response from). Misuse by our own code
(CR/LF in a header value, an invalid status code) raises `SipUsageError` instead: that is a bug here, not a
reason to answer 400. The header-value types (SipUri, NameAddr, Via) live in telephony.sip.address and are
re-exported here.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from telephony.sip.address import (
    SCHEME_RE,
    TOKEN_RE,
    NameAddr,
    SipUri,
    Via,
    split_outside_quotes,
)
from telephony.sip.errors import SipParseError, SipUsageError

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REASON_PHRASES",
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

# UDP cannot carry more than this anyway; for stream transports it bounds what one peer can make us buffer.
MAX_MESSAGE_SIZE = 65535

_VERSION_RE = re.compile(r"SIP/\d+\.\d+", re.IGNORECASE)
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# --------------------------------------------------------------------------------------------------------
# Header names


_COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_KNOWN_NAMES = {
    name.lower(): name
    for name in (
        *_COMPACT_FORMS.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "Call-Info",
        "Content-Disposition",
        "Content-Language",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Expires",
        "History-Info",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Remote-Party-ID",
        "Replaces",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Service-Route",
        "SIP-ETag",
        "SIP-If-Match",
        "Subscription-State",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
    )
}

# Headers whose value is one item even when it contains commas: credentials and challenges (RFC 3261
# section 7.3.1 exempts them), dates, free text, and the single-valued headers a transaction depends on.
_NOT_SPLIT = frozenset(
    name.lower()
    for name in (
        "WWW-Authenticate",
        "Authorization",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Authentication-Info",
        "Date",
        "Subject",
        "User-Agent",
        "Server",
        "Organization",
        "Retry-After",
        "Timestamp",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Content-Length",
        "Content-Type",
        "Max-Forwards",
        "Expires",
        "Min-Expires",
        "MIME-Version",
        "Priority",
        "Reply-To",
        "Refer-To",
        "Referred-By",
        "Replaces",
        "Identity",
        "Identity-Info",
        "Session-Expires",
        "Min-SE",
        "RAck",
        "RSeq",
        "Event",
        "Subscription-State",
        "SIP-ETag",
        "SIP-If-Match",
        "Content-Disposition",
    )
)


def _canonical_name(name: str) -> str:
    lowered = name.lower()
    if lowered in _COMPACT_FORMS:
        return _COMPACT_FORMS[lowered]
    return _KNOWN_NAMES.get(lowered, name)


class Headers:
    """Ordered, case-insensitive multi-map of header fields; compact names are stored as full names."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        # (lookup key, canonical name, value): the key is computed once, lookups are linear scans over ~15.
        self._fields: list[tuple[str, str, str]] = []
        for name, value in fields:
            self.add(name, value)

    def _values(self, name: str) -> Iterator[str]:
        key = _canonical_name(name).lower()
        return (value for field_key, _, value in self._fields if field_key == key)

    def get_all(self, name: str) -> list[str]:
        if _canonical_name(name).lower() in _NOT_SPLIT:
            return list(self._values(name))
        items: list[str] = []
        for value in self._values(name):
            items.extend(item.strip() for item in split_outside_quotes(value, ",") if item.strip())
        return items

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value: for list headers the first item (the topmost Via), not the whole line."""
        first = next(self._values(name), None)
        if first is None:
            return default
        if _canonical_name(name).lower() in _NOT_SPLIT:
            return first
        for item in split_outside_quotes(first, ","):
            if item.strip():
                return item.strip()
        return first

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    @staticmethod
    def _checked(name: str, value: str) -> tuple[str, str, str]:
        if not TOKEN_RE.fullmatch(name):
            raise SipUsageError(f"invalid header name {name!r}")
        if _FORBIDDEN_CHARS_RE.search(value):
            raise SipUsageError(f"control character in {name} header value")
        canonical = _canonical_name(name)
        return canonical.lower(), canonical, value.strip()

    def add(self, name: str, value: str) -> None:
        self._fields.append(self._checked(name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name, keeping the position of the first one."""
        checked = self._checked(name, value)
        keys = [key for key, _, _ in self._fields]
        position = keys.index(checked[0]) if checked[0] in keys else len(keys)
        self.remove(name)
        self._fields.insert(position, checked)

    def remove(self, name: str) -> None:
        key = _canonical_name(name).lower()
        self._fields = [entry for entry in self._fields if entry[0] != key]

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for _, name, value in self._fields]

    def copy(self) -> Headers:
        copied = Headers()
        copied._fields = list(self._fields)
        return copied

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and next(self._values(name), None) is not None

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._fields] == [(k, v) for k, _, v in other._fields]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


# --------------------------------------------------------------------------------------------------------
# Messages


def _serialise(start_line: str, headers: Headers, body: bytes) -> bytes:
    lines = [start_line]
    lines.extend(f"{name}: {value}" for name, value in headers.items() if name.lower() != "content-length")
    # Always present: over UDP it is optional, but stream transports need it and some peers insist anyway.
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


@dataclass
class SipRequest:
    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    def __bytes__(self) -> bytes:
        if not TOKEN_RE.fullmatch(self.method) or not self.uri or " " in self.uri:
            raise SipUsageError(f"cannot serialise request line {self.method!r} {self.uri!r}")
        return _serialise(f"{self.method} {self.uri} SIP/2.0", self.headers, self.body)


@dataclass
class SipResponse:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def __bytes__(self) -> bytes:
        if not 100 <= self.status <= 699 or _FORBIDDEN_CHARS_RE.search(self.reason):
            raise SipUsageError(f"cannot serialise status line {self.status} {self.reason!r}")
        return _serialise(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)


REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> SipResponse:
    """Build a response per RFC 3261 section 8.2.6 (Via, From, To, Call-ID, CSeq copied from the request).

    Record-Route is copied too for 101-299 responses: section 12.1.1 requires it in any response that
    establishes a dialog, and proxies ignore it elsewhere. Timestamp is echoed in 100 Trying (8.2.6.1).
    """
    if not 100 <= status <= 699:
        raise SipUsageError(f"invalid status code {status}")
    phrase = reason if reason is not None else REASON_PHRASES.get(status, "Unknown")
    headers = Headers()
    for value in request.headers._values("Via"):
        headers.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        for value in request.headers._values(name):
            if name == "To" and to_tag is not None:
                address = NameAddr.parse(value)
                if address.tag is None:
                    value = str(NameAddr(address.display, address.uri, {**address.params, "tag": to_tag}))
            headers.add(name, value)
            break
    if 100 < status < 300:
        for value in request.headers._values("Record-Route"):
            headers.add("Record-Route", value)
    if status == 100 and "Timestamp" in request.headers:
        headers.add("Timestamp", request.headers["Timestamp"])
    if content_type is not None:
        headers.add("Content-Type", content_type)
    for name, value in extra or ():
        headers.add(name, value)
    return SipResponse(status, phrase, headers, body)


# --------------------------------------------------------------------------------------------------------
# CSeq and fresh identifiers


def parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 10:
        raise SipParseError(400, "Malformed CSeq header")
    number = int(parts[0])
    if number >= 2**31 or not TOKEN_RE.fullmatch(parts[1]):  # section 8.1.1.5: less than 2**31
        raise SipParseError(400, "Malformed CSeq header")
    return number, parts[1]


def generate_tag() -> str:
    return secrets.token_hex(8)


def generate_branch() -> str:
    # The magic cookie marks an RFC 3261 branch, unique across space and time (section 8.1.1.7).
    return "z9hG4bK" + secrets.token_hex(12)


def new_via(transport: str, host: str, port: int) -> str:
    """The Via of a new request we send from `host`:`port` (8.1.1.7): a fresh branch, and rport (RFC 3581)
    so that answers come back to where it was sent from."""
    host_text = f"[{host}]" if ":" in host else host
    return f"SIP/2.0/{transport.upper()} {host_text}:{port};branch={generate_branch()};rport"


def generate_call_id(host: str) -> str:
    return f"{secrets.token_hex(16)}@{host}"


# --------------------------------------------------------------------------------------------------------
# Parser


def _parse_start_line(line: str) -> tuple[SipRequest | SipResponse, SipParseError | None]:
    """Returns the message shell and a deferred error that still allows a partial request (505, 416)."""
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        if version.upper() != "SIP/2.0":
            raise SipParseError(505, "Version Not Supported")
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not code.isascii() or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError(400, "Malformed status line")
        return SipResponse(int(code), reason.strip(), Headers()), None
    parts = line.split(" ")
    if len(parts) != 3 or not TOKEN_RE.fullmatch(parts[0]) or not parts[1]:
        raise SipParseError(400, "Malformed request line")
    method, uri, version = parts
    request = SipRequest(method, uri, Headers())
    if version.upper() != "SIP/2.0":
        if not _VERSION_RE.fullmatch(version):
            raise SipParseError(400, "Malformed request line")
        return request, SipParseError(505, "Version Not Supported")
    scheme, colon, _ = uri.partition(":")
    if not colon or not SCHEME_RE.fullmatch(scheme):
        raise SipParseError(400, "Malformed Request-URI")
    if scheme.lower() not in ("sip", "sips", "tel"):
        return request, SipParseError(416, "Unsupported URI Scheme")
    try:
        SipUri.parse(uri)
    except SipParseError:
        return request, SipParseError(400, "Malformed Request-URI")
    return request, None


def _split_head(data: bytes) -> tuple[list[bytes], bytes]:
    """Header lines (line endings stripped, CRLF or bare LF) and whatever follows the empty line."""
    lines: list[bytes] = []
    position = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        if newline < 0:
            lines.append(data[position:])
            return lines, b""
        line = data[position:newline]
        position = newline + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return lines, data[position:]
        lines.append(line)
    return lines, b""


def _parse_header_lines(lines: list[bytes], headers: Headers) -> SipParseError | None:
    """Fill `headers`, skipping bad lines; returns the first error so the caller can still build `partial`."""
    error: SipParseError | None = None
    unfolded: list[list[str]] = []
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            error = error or SipParseError(400, "Invalid UTF-8 in header section")
            continue
        if _FORBIDDEN_CHARS_RE.search(line):
            error = error or SipParseError(400, "Control character in header section")
            continue
        if line[0] in " \t":
            # Folded continuation (section 7.3.1): joins the previous field with a single space.
            if not unfolded:
                error = error or SipParseError(400, "Malformed header line")
                continue
            unfolded[-1].append(line.strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not TOKEN_RE.fullmatch(name):
            error = error or SipParseError(400, "Malformed header line")
            continue
        unfolded.append([name, value.strip(" \t")])
    for name, *values in unfolded:
        headers.add(name, " ".join(v for v in values if v))
    return error


_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE_VALUED = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")


def _check_request(request: SipRequest) -> None:
    headers = request.headers
    for name in _SINGLE_VALUED:
        if len(list(headers._values(name))) > 1:
            raise SipParseError(400, f"Multiple {name} headers", request)
    if not headers["Call-ID"]:
        raise SipParseError(400, "Malformed Call-ID header", request)
    try:
        _, method = parse_cseq(headers["CSeq"])
    except SipParseError as exc:
        raise SipParseError(400, exc.reason, request) from None
    if method != request.method:
        raise SipParseError(400, "CSeq method does not match request method", request)
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and not (
        max_forwards.isascii()
        and max_forwards.isdigit()
        and len(max_forwards) <= 3
        and int(max_forwards) <= 255
    ):
        raise SipParseError(400, "Malformed Max-Forwards header", request)
    for name in ("From", "To"):
        try:
            NameAddr.parse(headers[name])
        except SipParseError:
            raise SipParseError(400, f"Malformed {name} header", request) from None
    try:
        for value in headers.get_all("Via"):
            Via.parse(value)
    except SipParseError:
        raise SipParseError(400, "Malformed Via header", request) from None


def parse_message(data: bytes) -> SipRequest | SipResponse:
    """Parse one datagram. Raises SipParseError, and only that, for any malformed input."""
    # Section 7.5: CRLFs before the start line are ignored (keep-alives, stream framing slop).
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError(400, "Empty message")
    lines, body = _split_head(data)
    try:
        start_line = lines[0].decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(400, "Invalid UTF-8 in start line") from None
    if _FORBIDDEN_CHARS_RE.search(start_line):
        raise SipParseError(400, "Control character in start line")
    message, error = _parse_start_line(start_line)
    header_error = _parse_header_lines(lines[1:], message.headers)
    error = error or header_error
    if error is None and len(data) > MAX_MESSAGE_SIZE:
        error = SipParseError(513, "Message Too Large")
    if error is None:
        lengths = set(message.headers._values("Content-Length"))
        if len(lengths) > 1:
            error = SipParseError(400, "Conflicting Content-Length headers")
        elif lengths:
            length_text = lengths.pop()
            if not (length_text.isascii() and length_text.isdigit()):
                error = SipParseError(400, "Malformed Content-Length header")
            elif len(length_text.lstrip("0")) > 10 or int(length_text) > len(body):
                # (The digit-count check keeps int() away from peer-sized numbers: 3.11 caps it at 4300.)
                error = SipParseError(400, "Content-Length exceeds datagram")
            else:
                # Bytes past Content-Length are not part of this message (section 18.3); drop them.
                body = body[: int(length_text)]
    missing = next((name for name in _MANDATORY if name not in message.headers), None)
    if isinstance(message, SipResponse):
        if error is not None:
            raise error
        if missing is not None:
            raise SipParseError(400, f"Missing {missing} header")
        parse_cseq(message.headers["CSeq"])
        message.body = body
        return message
    if missing is not None:
        raise error or SipParseError(400, f"Missing {missing} header")
    try:
        # Without a usable top Via there is nowhere to send a response (section 18.2.2).
        Via.parse(message.headers["Via"])
    except SipParseError:
        raise error or SipParseError(400, "Malformed Via header") from None
    if error is not None:
        partial = SipRequest(message.method, message.uri, message.headers.copy())
        raise SipParseError(error.status, error.reason, partial)
    _check_request(message)
    message.body = body
    return message
