"""REGISTER client (RFC 3261 section 10.2) as a sans-IO state machine: builds requests, consumes responses.

The shell sends what `next_request()` / `unregister()` return, feeds every final or provisional response
to `handle_response(response, now)`, tells `timed_out(now)` when the transaction gave up (timer F), and
wakes up at `refresh_at()` to call `next_request()` again. Time is always passed in; nothing here sleeps.

All state transitions live in this module:

    IDLE --next_request--> REGISTERING --2xx--> REGISTERED --refresh_at: next_request--> REGISTERING
    REGISTERING --401/407 (credentials accepted for retry) / 423--> REGISTERING (new request)
    REGISTERING --other final / timeout--> FAILED --retry_at: next_request--> REGISTERING
    any idle state --unregister--> UNREGISTERING --2xx--> UNREGISTERED (failure: FAILED, no retry)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from telephony.sip.address import NameAddr, SipUri
from telephony.sip.auth import Credentials, DigestAuthenticator
from telephony.sip.errors import SipParseError, SipUsageError
from telephony.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    generate_branch,
    generate_call_id,
    generate_tag,
    parse_cseq,
)

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "Challenge",
    "Failed",
    "Ignored",
    "Provisional",
    "Registered",
    "Registration",
    "RegistrationEvent",
    "RegistrationState",
    "Retry",
    "Unregistered",
    "refresh_interval",
]

# RFC 5626 section 4.5 recovery times: 30 s doubling per consecutive failure, capped at 30 minutes. A
# permanent failure (wrong password, unknown extension) waits the cap: only an operator can fix it.
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 1800.0
# Expires values are delta-seconds, at most 2**32 - 1 (RFC 3261 section 20.19); keep the sane range.
_MAX_EXPIRES = 2**31 - 1
_TRANSIENT = frozenset({408, 480})  # besides every 5xx: worth retrying on the backoff schedule


def refresh_interval(expires: int) -> float:
    """Seconds after a 2xx to re-register: 32 s before expiry, but never later than half-way."""
    return float(max(expires / 2, expires - 32))


class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    UNREGISTERING = "unregistering"
    UNREGISTERED = "unregistered"


# --------------------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class Registered:
    expires: int  # seconds granted by the registrar
    refresh_at: float  # when to send the refresh (same clock as `now`)


@dataclass(frozen=True, slots=True)
class Unregistered:
    pass


@dataclass(frozen=True, slots=True)
class Challenge:
    request: SipRequest  # send this: the REGISTER again, with credentials


@dataclass(frozen=True, slots=True)
class Retry:
    request: SipRequest  # send this: the REGISTER again, corrected after `status` (423: longer expires)
    status: int


@dataclass(frozen=True, slots=True)
class Failed:
    status: int
    reason: str
    retry_at: float | None = None  # when to try again (backoff or Retry-After); None: do not
    permanent: bool = False  # retrying will not help without a configuration change


@dataclass(frozen=True, slots=True)
class Provisional:
    status: int


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str  # the response does not belong to the outstanding REGISTER


RegistrationEvent = Registered | Unregistered | Challenge | Retry | Failed | Provisional | Ignored


# --------------------------------------------------------------------------------------------------------
# Helpers


def _parse_delta_seconds(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    return min(int(text), _MAX_EXPIRES)


def _retry_after(response: SipResponse) -> int | None:
    """Retry-After: '120', '120;duration=3600' or '120 (maintenance)' (RFC 3261 section 20.33)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    return _parse_delta_seconds(value.split(";", 1)[0].split("(", 1)[0])


def _same_contact(a: SipUri, b: SipUri) -> bool:
    # The registrar echoes our Contact, perhaps with other parameters or case; the binding is the address.
    return (
        a.scheme == b.scheme
        and a.user == b.user
        and a.host.lower() == b.host.lower()
        and (a.port or 5060) == (b.port or 5060)
    )


def _parse_uri(value: str, what: str) -> SipUri:
    try:
        return SipUri.parse(value)
    except SipParseError as exc:
        raise SipUsageError(f"invalid {what} {value!r}: {exc.reason}") from None


# --------------------------------------------------------------------------------------------------------
# The state machine


class Registration:
    """One binding of `contact` to `aor` at `registrar`, kept alive by refreshes."""

    def __init__(
        self,
        *,
        registrar: str,
        aor: str,
        contact: str,
        credentials: Credentials | None,
        expires: int = 3600,
        local_host: str,
        local_port: int,
        transport: str = "UDP",
        user_agent: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.registrar = _parse_uri(registrar, "registrar URI")
        if self.registrar.scheme not in ("sip", "sips"):
            raise SipUsageError(f"registrar must be a sip: or sips: URI, not {registrar!r}")
        self.aor = _parse_uri(aor, "address of record")
        try:
            contact_address = NameAddr.parse(contact)
        except SipParseError as exc:
            raise SipUsageError(f"invalid contact {contact!r}: {exc.reason}") from None
        self.contact = _parse_uri(contact_address.uri, "contact")
        if not 0 < expires <= _MAX_EXPIRES:
            raise SipUsageError(f"expires must be positive, not {expires}")
        if not 0 < local_port < 65536 or not local_host:
            raise SipUsageError(f"invalid local address {local_host}:{local_port}")
        self.requested_expires = expires
        self.local_host = local_host
        self.local_port = local_port
        self.transport = transport.upper()
        self.user_agent = user_agent
        # Section 10.2: one Call-ID for all registrations of this UA during a boot cycle, CSeq increasing.
        self.call_id = call_id or generate_call_id(local_host)
        self._from_tag = generate_tag()
        self._cseq = 0
        self._authenticator = DigestAuthenticator(credentials) if credentials is not None else None
        self.state = RegistrationState.IDLE
        self.expires_at: float | None = None
        self.granted_expires: int | None = None
        self._outstanding: SipRequest | None = None
        self._next_at: float | None = None
        self._failures = 0

    # --- what the shell sends -----------------------------------------------------------------------
    @property
    def destination(self) -> tuple[str, int]:
        """Where to send the REGISTER when no outbound proxy is configured (no DNS SRV here)."""
        default_port = 5061 if self.registrar.scheme == "sips" or self.transport == "TLS" else 5060
        return self.registrar.host, self.registrar.port or default_port

    @property
    def outstanding(self) -> SipRequest | None:
        return self._outstanding

    def _build(self, expires: int) -> SipRequest:
        self._cseq += 1
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{self.transport} {self._hostport()};branch={generate_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{self.aor}>;tag={self._from_tag}")
        headers.add("To", f"<{self.aor}>")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self._cseq} REGISTER")
        headers.add("Contact", f"<{self.contact}>")
        headers.add("Expires", str(expires))
        if self.user_agent is not None:
            headers.add("User-Agent", self.user_agent)
        request = SipRequest("REGISTER", str(self.registrar), headers)
        if self._authenticator is not None:
            # Answer the last challenge again (nc + 1): saves a 401 round trip on every refresh.
            request = self._authenticator.preauthorize(request)
        return request

    def _hostport(self) -> str:
        host = f"[{self.local_host}]" if ":" in self.local_host else self.local_host
        return f"{host}:{self.local_port}"

    def _check_idle(self) -> None:
        # Section 10.2: no new REGISTER until the previous one got a final response or timed out.
        if self._outstanding is not None:
            raise SipUsageError("a REGISTER is still outstanding")

    def next_request(self) -> SipRequest:
        """The (re-)REGISTER to send now: initial, refresh, or retry after a failure."""
        self._check_idle()
        self._outstanding = self._build(self.requested_expires)
        self.state = RegistrationState.REGISTERING
        self._next_at = None
        return self._outstanding

    def unregister(self) -> SipRequest:
        """REGISTER with Expires: 0, removing our binding (section 10.2.2)."""
        self._check_idle()
        self._outstanding = self._build(0)
        self.state = RegistrationState.UNREGISTERING
        self._next_at = None
        return self._outstanding

    def refresh_at(self) -> float | None:
        """When the next REGISTER is due: the refresh when registered, the retry after a failure; None
        while a request is outstanding, before the first one, and once unregistered."""
        return self._next_at

    def registered(self, now: float) -> bool:
        """Whether the registrar still holds our binding (a failed refresh does not end it at once)."""
        return self.expires_at is not None and now < self.expires_at

    # --- what the shell feeds back ------------------------------------------------------------------
    def handle_response(self, response: SipResponse, now: float) -> RegistrationEvent:
        request = self._outstanding
        if request is None:
            return Ignored("no REGISTER outstanding")
        try:
            number, method = parse_cseq(response.headers.get("CSeq") or "")
        except SipParseError:
            return Ignored("malformed CSeq")
        if response.headers.get("Call-ID") != self.call_id or method != "REGISTER" or number != self._cseq:
            return Ignored("response to another request")
        status = response.status
        if status < 200:
            return Provisional(status)
        self._outstanding = None
        unregistering = self.state is RegistrationState.UNREGISTERING
        if 200 <= status < 300:
            return self._unregistered() if unregistering else self._registered(response, now)
        if status in (401, 407) and self._authenticator is not None:
            retried = self._authenticator.authorize(request, response)
            if retried is not None:
                return self._resend(retried, Challenge(retried))
            return self._failed(status, response.reason, now, permanent=True, retry=not unregistering)
        if status == 423 and not unregistering:
            min_expires = _parse_delta_seconds(response.headers.get("Min-Expires"))
            if min_expires is not None and min_expires > self.requested_expires:
                # Section 10.2.8: retry with an interval no shorter than Min-Expires; keep it for refreshes.
                self.requested_expires = min_expires
                retried = self._build(min_expires)
                return self._resend(retried, Retry(retried, status))
            return self._failed(status, "423 without a usable Min-Expires", now, permanent=True)
        if status in (401, 407):
            return self._failed(status, "Registrar demands credentials; none configured", now, permanent=True)
        retry_after = _retry_after(response)
        transient = status in _TRANSIENT or 500 <= status < 600 or retry_after is not None
        return self._failed(
            status, response.reason, now, permanent=not transient, retry=not unregistering, delay=retry_after
        )

    def timed_out(self, now: float) -> Failed:
        """The client transaction expired without a final response (timer F, 64*T1)."""
        if self._outstanding is None:
            raise SipUsageError("no REGISTER outstanding")
        unregistering = self.state is RegistrationState.UNREGISTERING
        self._outstanding = None
        return self._failed(408, "Request Timeout", now, permanent=False, retry=not unregistering)

    # --- transitions --------------------------------------------------------------------------------
    def _resend(self, request: SipRequest, event: Challenge | Retry) -> Challenge | Retry:
        self._outstanding = request
        self._cseq = parse_cseq(request.headers["CSeq"])[0]
        return event

    def _granted_expires(self, response: SipResponse) -> int:
        """Section 10.2.4: our Contact's expires parameter, else the Expires header, else what we asked."""
        header_expires = _parse_delta_seconds(response.headers.get("Expires"))
        for value in response.headers.get_all("Contact"):
            try:
                address = NameAddr.parse(value)
                uri = SipUri.parse(address.uri)
            except SipParseError:
                continue
            if _same_contact(uri, self.contact):
                param = _parse_delta_seconds(address.params.get("expires"))
                if param is not None:
                    return param
                break
        return header_expires if header_expires is not None else self.requested_expires

    def _registered(self, response: SipResponse, now: float) -> Registered | Failed:
        expires = self._granted_expires(response)
        if expires == 0:
            return self._failed(response.status, "Registrar granted no binding", now, permanent=False)
        self.state = RegistrationState.REGISTERED
        self._failures = 0
        self.granted_expires = expires
        self.expires_at = now + expires
        self._next_at = now + refresh_interval(expires)
        return Registered(expires, self._next_at)

    def _unregistered(self) -> Unregistered:
        self.state = RegistrationState.UNREGISTERED
        self.expires_at = None
        self.granted_expires = None
        self._next_at = None
        if self._authenticator is not None:
            self._authenticator.forget()
        return Unregistered()

    def _failed(
        self,
        status: int,
        reason: str,
        now: float,
        *,
        permanent: bool,
        retry: bool = True,
        delay: int | None = None,
    ) -> Failed:
        self.state = RegistrationState.FAILED
        self._failures += 1
        if not retry:
            self._next_at = None
            return Failed(status, reason, None, permanent)
        if delay is None:
            if permanent:
                delay_s = BACKOFF_MAX_S
            else:
                delay_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(self._failures - 1, 16))
        else:
            delay_s = float(delay)
        self._next_at = now + delay_s
        return Failed(status, reason, self._next_at, permanent)
