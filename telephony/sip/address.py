"""Header-value grammar of RFC 3261 section 25: SIP/tel URIs, name-addr (From/To/Contact) and Via."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from telephony.sip.errors import SipParseError

TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_URI_FORBIDDEN_RE = re.compile(r'[\s<>"]')
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_VIA_PROTOCOL_RE = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)(?:\s+|$)", re.IGNORECASE)


def split_outside_quotes(value: str, separator: str) -> list[str]:
    """Split on `separator` where it is not inside a quoted string or <...> (URIs may hold ',' and ';')."""
    if separator not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return value.split(separator)
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


def _parse_params(text: str, what: str) -> dict[str, str | None]:
    """';name=value;flag' -> {'name': 'value', 'flag': None}; names are case-insensitive, so lowercased."""
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    pieces = split_outside_quotes(text, ";")
    if pieces[0].strip():
        raise SipParseError(400, f"Malformed {what}")
    for piece in pieces[1:]:
        name, has_value, value = piece.partition("=")
        name = name.strip()
        if not TOKEN_RE.fullmatch(name):
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
        if not colon or not rest or _URI_FORBIDDEN_RE.search(rest):
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
            if any(c in uri for c in ",?"):
                raise SipParseError(400, "Malformed addr-spec")
        uri = uri.strip()
        scheme, colon, rest = uri.partition(":")
        if not colon or not rest or not SCHEME_RE.fullmatch(scheme) or _URI_FORBIDDEN_RE.search(uri):
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
