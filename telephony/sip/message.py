"""RFC 3261 SIP messages: parse one datagram into a request or response, and serialise them back. No I/O.

Everything the peer can get wrong surfaces as `SipParseError` (status hint + reason phrase, and where the
request is intact enough, a `partial` request to build the error response from). Misuse by our own code
(CR/LF in a header value, an invalid status code) raises `SipUsageError` instead: that is a bug here, not a
reason to answer 400.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# UDP cannot carry more than this anyway; for stream transports it bounds what one peer can make us buffer.
MAX_MESSAGE_SIZE = 65535

_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_VERSION_RE = re.compile(r"SIP/\d+\.\d+", re.IGNORECASE)
_VIA_PROTOCOL_RE = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)(?:\s+|$)", re.IGNORECASE)
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
        *"Accept Accept-Encoding Accept-Language Alert-Info Allow Authentication-Info Authorization".split(),
        *"Call-Info Content-Disposition Content-Language CSeq Date Diversion Error-Info Expires".split(),
        *"History-Info In-Reply-To Max-Forwards MIME-Version Min-Expires Min-SE Organization".split(),
        *"P-Asserted-Identity P-Preferred-Identity Path Priority Privacy Proxy-Authenticate".split(),
        *"Proxy-Authorization Proxy-Require RAck Reason Record-Route Remote-Party-ID Replaces".split(),
        *"Reply-To Require Retry-After Route RSeq Server Service-Route SIP-ETag SIP-If-Match".split(),
        *"Subscription-State Timestamp Unsupported User-Agent Warning WWW-Authenticate".split(),
    )
}

# Headers whose value is one item even when it contains commas: credentials and challenges (RFC 3261
# section 7.3.1 exempts them), dates, free text, and the single-valued headers a transaction depends on.
_NOT_SPLIT = frozenset(
    name.lower()
    for name in (
        "WWW-Authenticate Authorization Proxy-Authenticate Proxy-Authorization Authentication-Info Date "
        "Subject User-Agent Server Organization Retry-After Timestamp From To Call-ID CSeq Content-Length "
        "Content-Type Max-Forwards Expires Min-Expires MIME-Version Priority Reply-To Refer-To Referred-By "
        "Replaces Identity Identity-Info Session-Expires Min-SE RAck RSeq Event Subscription-State SIP-ETag "
        "SIP-If-Match Content-Disposition"
    ).split()
)


def _canonical_name(name: str) -> str:
    lowered = name.lower()
    if lowered in _COMPACT_FORMS:
        return _COMPACT_FORMS[lowered]
    return _KNOWN_NAMES.get(lowered, name)


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    """Split on `separator` where it is not inside a quoted string or <...> (URIs may hold ',' and ';')."""
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif in_quotes:
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif char == separator and not in_angle:
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return parts


def _find_outside_quotes(value: str, target: str) -> int:
    in_quotes = escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif in_quotes:
            escaped = char == "\\"
            in_quotes = char != '"'
        elif char == '"':
            in_quotes = True
        elif char == target:
            return index
    return -1


class Headers:
    """Ordered, case-insensitive multi-map of header fields; compact names are stored under their full name."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = []
        for name, value in fields:
            self.add(name, value)

    def _values(self, name: str) -> Iterator[str]:
        key = _canonical_name(name).lower()
        return (value for field_name, value in self._fields if field_name.lower() == key)

    def get_all(self, name: str) -> list[str]:
        if _canonical_name(name).lower() in _NOT_SPLIT:
            return list(self._values(name))
        items: list[str] = []
        for value in self._values(name):
            items.extend(item.strip() for item in _split_outside_quotes(value, ",") if item.strip())
        return items

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value: for list headers the first item (the topmost Via), not the whole line."""
        first = next(self._values(name), None)
        if first is None:
            return default
        if _canonical_name(name).lower() in _NOT_SPLIT:
            return first
        for item in _split_outside_quotes(first, ","):
            if item.strip():
                return item.strip()
        return first

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    @staticmethod
    def _checked(name: str, value: str) -> tuple[str, str]:
        if not _TOKEN_RE.fullmatch(name):
            raise SipUsageError(f"invalid header name {name!r}")
        if _FORBIDDEN_CHARS_RE.search(value):
            raise SipUsageError(f"control character in {name} header value")
        return _canonical_name(name), value.strip()

    def add(self, name: str, value: str) -> None:
        self._fields.append(self._checked(name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name, keeping the position of the first one."""
        checked = self._checked(name, value)
        key = checked[0].lower()
        position = next((i for i, (n, _) in enumerate(self._fields) if n.lower() == key), len(self._fields))
        self.remove(name)
        self._fields.insert(position, checked)

    def remove(self, name: str) -> None:
        key = _canonical_name(name).lower()
        self._fields = [(n, v) for n, v in self._fields if n.lower() != key]

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

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
        return [(n.lower(), v) for n, v in self._fields] == [(n.lower(), v) for n, v in other._fields]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


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
        if not _TOKEN_RE.fullmatch(self.method) or not self.uri or " " in self.uri:
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
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None:
            address = NameAddr.parse(value)
            if address.tag is None:
                value = str(NameAddr(address.display, address.uri, {**address.params, "tag": to_tag}))
        headers.add(name, value)
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
# Addresses: URIs, name-addr (From/To/Contact), Via


def _parse_params(text: str, what: str) -> dict[str, str | None]:
    """';name=value;flag' -> {'name': 'value', 'flag': None}; names are case-insensitive, so lowercased."""
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    pieces = _split_outside_quotes(text, ";")
    if pieces[0].strip():
        raise SipParseError(400, f"Malformed {what}")
    for piece in pieces[1:]:
        name, has_value, value = piece.partition("=")
        name = name.strip()
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError(400, f"Malformed {what} parameter")
        params[name.lower()] = value.strip() if has_value else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _IPV6_RE.fullmatch(host) or ":" not in host:
            raise SipParseError(400, f"Malformed host in {what}")
    else:
        host, _, port_text = text.partition(":")
        rest = text[len(host) :]
        if not _HOSTNAME_RE.fullmatch(host):
            raise SipParseError(400, f"Malformed host in {what}")
    if not rest:
        return host, None
    port_text = rest[1:]
    if rest[0] != ":" or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise SipParseError(400, f"Malformed port in {what}")
    port = int(port_text)
    if port > 65535:
        raise SipParseError(400, f"Malformed port in {what}")
    return host, port


def _format_host(host: str, port: int | None) -> str:
    # Hosts are kept without IPv6 brackets so they can go straight to socket calls.
    text = f"[{host}]" if ":" in host else host
    return text if port is None else f"{text}:{port}"


@dataclass(frozen=True)
class SipUri:
    """sip:, sips: (RFC 3261 section 19.1) or tel: (RFC 3966; the number is `user`, `host` is empty)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    password: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> SipUri:
        text = value.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or not rest or any(c.isspace() or c in '<>"' for c in rest):
            raise SipParseError(400, "Malformed URI")
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not re.fullmatch(r"[0-9A-Fa-f*#+().pPwW-]+", number):
                raise SipParseError(400, "Malformed tel URI")
            return cls("tel", number, "", None, _parse_params(";" + param_text if param_text else "", "URI"))
        if scheme not in ("sip", "sips"):
            raise SipParseError(400, "Unsupported URI scheme")
        user = password = None
        userinfo, at, hostpart = rest.partition("@")
        if at:
            user, colon, password_text = userinfo.partition(":")
            password = password_text if colon else None
            if not user:
                raise SipParseError(400, "Malformed URI user part")
        else:
            hostpart = rest
        hostpart, question, header_text = hostpart.partition("?")
        hostport, semicolon, param_text = hostpart.partition(";")
        host, port = _parse_hostport(hostport, "URI")
        params = _parse_params(";" + param_text if semicolon else "", "URI")
        headers: dict[str, str] = {}
        if question:
            for pair in header_text.split("&"):
                name, equals, header_value = pair.partition("=")
                if not name or not equals:
                    raise SipParseError(400, "Malformed URI headers")
                headers[name] = header_value
        return cls(scheme, user, host, port, params, password, headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        headers = "&".join(f"{name}={value}" for name, value in self.headers.items())
        return (
            f"{self.scheme}:{userinfo}{_format_host(self.host, self.port)}{_format_params(self.params)}"
            + (f"?{headers}" if headers else "")
        )


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted string starting at text[start] == '"'; returns (unescaped text, index after it)."""
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            chars.append(text[index + 1])
            index += 2
            continue
        if char == '"':
            return "".join(chars), index + 1
        chars.append(char)
        index += 1
    raise SipParseError(400, "Unterminated quoted string")


@dataclass(frozen=True)
class NameAddr:
    """From / To / Contact / Route values: optional display name, URI, header parameters (tag, expires...)."""

    display: str | None
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        text = value.strip()
        display: str | None = None
        if text.startswith('"'):
            display, end = _read_quoted(text, 0)
            text = text[end:].lstrip()
            if not text.startswith("<"):
                raise SipParseError(400, "Malformed name-addr")
        angle = _find_outside_quotes(text, "<")
        if angle >= 0:
            before, rest = text[:angle], text[angle + 1 :]
            if before.strip():
                if display is not None:
                    raise SipParseError(400, "Malformed name-addr")
                display = " ".join(before.split())
            uri, closed, param_text = rest.partition(">")
            if not closed:
                raise SipParseError(400, "Malformed name-addr: missing '>'")
        else:
            # addr-spec without brackets: everything after the first ';' is a header parameter (section 20).
            uri, semicolon, param_text = text.partition(";")
            param_text = semicolon + param_text
            if any(c in uri for c in ',?"'):
                raise SipParseError(400, "Malformed addr-spec")
        uri = uri.strip()
        scheme, colon, rest = uri.partition(":")
        if not colon or not rest or not _SCHEME_RE.fullmatch(scheme) or any(c.isspace() for c in uri):
            raise SipParseError(400, "Malformed URI in name-addr")
        return cls(display, uri, _parse_params(param_text, "name-addr"))

    def __str__(self) -> str:
        address = f"<{self.uri}>{_format_params(self.params)}"
        if self.display is None:
            return address
        escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" {address}'

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


@dataclass(frozen=True)
class Via:
    """One Via value: 'SIP/2.0/UDP host:port;branch=z9hG4bK...;rport'."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        match = _VIA_PROTOCOL_RE.match(value)
        if match is None:
            raise SipParseError(400, "Malformed Via header")
        sent_by, semicolon, param_text = value[match.end() :].partition(";")
        host, port = _parse_hostport(sent_by, "Via")
        return cls(match.group(1).upper(), host, port, _parse_params(semicolon + param_text, "Via"))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {_format_host(self.host, self.port)}{_format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")


def parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 10:
        raise SipParseError(400, "Malformed CSeq header")
    number = int(parts[0])
    if number >= 2**31 or not _TOKEN_RE.fullmatch(parts[1]):  # section 8.1.1.5: less than 2**31
        raise SipParseError(400, "Malformed CSeq header")
    return number, parts[1]


def generate_tag() -> str:
    return secrets.token_hex(8)


def generate_branch() -> str:
    # The magic cookie marks an RFC 3261 branch, unique across space and time (section 8.1.1.7).
    return "z9hG4bK" + secrets.token_hex(12)


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
    if len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]) or not parts[1]:
        raise SipParseError(400, "Malformed request line")
    method, uri, version = parts
    request = SipRequest(method, uri, Headers())
    if version.upper() != "SIP/2.0":
        if not _VERSION_RE.fullmatch(version):
            raise SipParseError(400, "Malformed request line")
        return request, SipParseError(505, "Version Not Supported")
    scheme, colon, _ = uri.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
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
        if not colon or not _TOKEN_RE.fullmatch(name):
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
        max_forwards.isascii() and max_forwards.isdigit() and int(max_forwards) <= 255
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
    error = error or _parse_header_lines(lines[1:], message.headers)
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
            elif int(length_text) > len(body):
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
    partial = SipRequest(message.method, message.uri, message.headers.copy())
    try:
        # Without a usable top Via there is nowhere to send a response (section 18.2.2).
        Via.parse(partial.headers["Via"])
    except SipParseError:
        if error is None:
            raise SipParseError(400, "Malformed Via header") from None
        partial = None
    if error is not None:
        raise SipParseError(error.status, error.reason, partial)
    _check_request(message)
    message.body = body
    return message
