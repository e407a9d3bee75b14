"""Blind transfer with REFER (RFC 3515, Referred-By RFC 3892): build the REFER, read the NOTIFY progress.

No I/O. The dialog owner builds the REFER with `build_refer`, expects 202 Accepted, then feeds each
in-dialog NOTIFY to `parse_refer_notify`, answering 200 when it returns and the error's status (400, 415,
489) when it raises SipParseError. The transfer is over when a TransferProgress has `final` set; it worked
when `succeeded` is also true.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from telephony.sip.address import TOKEN_RE, NameAddr, SipUri
from telephony.sip.errors import SipParseError, SipUsageError
from telephony.sip.message import Headers, SipRequest, new_via

__all__ = ["TransferProgress", "build_refer", "parse_refer_notify", "parse_sipfrag"]

# A sipfrag carries one status line and perhaps some headers; nothing legitimate comes near this.
_MAX_SIPFRAG = 8192


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """What the transferee reported: the status of its INVITE to the transfer target."""

    status: int
    reason: str
    final: bool  # no further NOTIFY for this REFER (final status, or subscription terminated)
    event_id: int | None = None  # Event: refer;id=<REFER CSeq> when several REFERs share a dialog

    @property
    def succeeded(self) -> bool:
        return self.final and 200 <= self.status < 300


def _name_addr(value: str, what: str) -> NameAddr:
    try:
        address = NameAddr.parse(value)
        if address.uri.partition(":")[0].lower() in ("sip", "sips", "tel"):
            SipUri.parse(address.uri)
    except SipParseError as exc:
        raise SipUsageError(f"invalid {what} {value!r}: {exc.reason}") from None
    return address


def _target(value: str) -> NameAddr:
    """Refer-To is a URI, not a header value: a bare 'sip:x;user=phone?Replaces=...' keeps its ';' and '?'
    parts inside the URI (a name-addr in brackets is accepted too)."""
    text = value.strip()
    if text.startswith(("<", '"')):
        return _name_addr(text, "Refer-To")
    scheme = text.partition(":")[0].lower()
    try:
        if scheme not in ("sip", "sips", "tel"):
            raise SipParseError(400, "Refer-To must be a sip:, sips: or tel: URI")
        SipUri.parse(text)
    except SipParseError as exc:
        raise SipUsageError(f"invalid Refer-To {value!r}: {exc.reason}") from None
    return NameAddr(None, text, {})


def _with_tag(value: str, tag: str | None, what: str) -> str:
    address = _name_addr(value, what)
    params = dict(address.params)
    if tag is not None:
        params["tag"] = tag
    return str(NameAddr(address.display, address.uri, params))


def _route_request_uri(remote_target: str, route_set: Sequence[str]) -> tuple[str, list[str]]:
    """Request-URI and Route headers per RFC 3261 section 12.2.1.1 (loose and strict next hop)."""
    routes = list(route_set)
    if not routes:
        return remote_target, []
    first = _name_addr(routes[0], "route")
    try:
        loose = "lr" in SipUri.parse(first.uri).params
    except SipParseError as exc:
        raise SipUsageError(f"invalid route {routes[0]!r}: {exc.reason}") from None
    if loose:
        return remote_target, routes
    # A strict router wants its own URI as Request-URI and the remote target at the end of the Route set.
    return first.uri, [*routes[1:], f"<{remote_target}>"]


def build_refer(
    *,
    call_id: str,
    local_uri: str,
    local_tag: str,
    remote_uri: str,
    remote_tag: str | None,
    remote_target: str,
    cseq: int,
    local_host: str,
    local_port: int,
    contact: str,
    refer_to: str,
    referred_by: str | None = None,
    route_set: Sequence[str] = (),
    transport: str = "UDP",
    user_agent: str | None = None,
) -> SipRequest:
    """An in-dialog REFER asking the peer to call `refer_to` (a sip:, sips: or tel: URI or name-addr).

    `local_uri` / `remote_uri` are the dialog's From / To values without tags; `remote_target` is the
    peer's Contact URI; `cseq` is the next local CSeq number. Referred-By defaults to our own address.
    """
    if not 0 < cseq < 2**31:
        raise SipUsageError(f"invalid CSeq {cseq}")
    target = _target(refer_to)
    # Always in angle brackets: a target with ';' or '?' (a Replaces header, say) would otherwise be split.
    refer_to_value = str(NameAddr(target.display, target.uri, target.params))
    referrer = _name_addr(referred_by if referred_by is not None else local_uri, "Referred-By")
    request_uri, routes = _route_request_uri(remote_target, route_set)
    headers = Headers()
    headers.add("Via", new_via(transport, local_host, local_port))
    headers.add("Max-Forwards", "70")
    for route in routes:
        headers.add("Route", route)
    headers.add("From", _with_tag(local_uri, local_tag, "local URI"))
    headers.add("To", _with_tag(remote_uri, remote_tag, "remote URI"))
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} REFER")
    headers.add("Contact", str(_name_addr(contact, "contact")))
    headers.add("Refer-To", refer_to_value)
    headers.add("Referred-By", str(NameAddr(referrer.display, referrer.uri, {})))
    if user_agent is not None:
        headers.add("User-Agent", user_agent)
    return SipRequest("REFER", request_uri, headers)


def parse_sipfrag(body: bytes) -> tuple[int, str]:
    """b"SIP/2.0 200 OK\\r\\n..." -> (200, "OK"). Only the status line matters for transfer progress."""
    if len(body) > _MAX_SIPFRAG:
        raise SipParseError(400, "sipfrag body too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(400, "sipfrag is not UTF-8") from None
    lines = text.lstrip("\r\n").splitlines()
    if not lines:
        raise SipParseError(400, "Empty sipfrag")
    version, _, rest = lines[0].strip().partition(" ")
    code, _, reason = rest.strip().partition(" ")
    if version.upper() != "SIP/2.0":
        raise SipParseError(400, "sipfrag does not start with a SIP/2.0 status line")
    if len(code) != 3 or not code.isascii() or not code.isdigit() or not 100 <= int(code) <= 699:
        raise SipParseError(400, "Malformed status code in sipfrag")
    return int(code), " ".join(reason.split())


def _subscription_state(request: SipRequest) -> str:
    value = request.headers.get("Subscription-State")
    if value is None:
        raise SipParseError(400, "NOTIFY without Subscription-State")
    state = value.split(";", 1)[0].strip().lower()
    if not TOKEN_RE.fullmatch(state):
        raise SipParseError(400, "Malformed Subscription-State header")
    # A value from a future extension is treated like "pending" (RFC 6665): the transfer is not over.
    return state if state in ("active", "terminated") else "pending"


def _refer_event_id(request: SipRequest) -> int | None:
    value = request.headers.get("Event")
    if value is None:
        raise SipParseError(400, "NOTIFY without Event header")
    package, _, param_text = value.partition(";")
    if package.strip().lower() != "refer":
        raise SipParseError(489, "Bad Event")
    for param in param_text.split(";"):
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "id":
            param_value = param_value.strip()
            if not param_value.isascii() or not param_value.isdigit() or len(param_value) > 10:
                raise SipParseError(400, "Malformed Event id")
            return int(param_value)
    return None


def parse_refer_notify(request: SipRequest) -> TransferProgress:
    """Read one NOTIFY of the implicit refer subscription (RFC 3515 section 2.4.5).

    Raises SipParseError carrying the status to answer: 489 for another event package, 415 for a body
    that is not message/sipfrag, 400 for anything malformed.
    """
    if request.method != "NOTIFY":
        raise SipUsageError(f"not a NOTIFY: {request.method}")
    event_id = _refer_event_id(request)
    state = _subscription_state(request)
    content_type = request.headers.get("Content-Type")
    if content_type is not None and content_type.split(";", 1)[0].strip().lower() != "message/sipfrag":
        raise SipParseError(415, "Unsupported Media Type")
    status, reason = parse_sipfrag(request.body)
    return TransferProgress(status, reason, state == "terminated" or status >= 200, event_id)
