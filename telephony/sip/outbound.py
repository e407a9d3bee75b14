"""What the user agent starts itself: calls out (through a trunk, with digest auth) and registrations.

`OutboundMixin` is the client half of `UserAgent`: the INVITE/ACK/CANCEL of an outgoing call (offering RFC
4028 session timers, retried with a longer interval after a 422, and reading the timer its 2xx settles),
requests retried after a 401/407 challenge (telephony.sip.auth), and one task per configured registration
that keeps its binding alive (telephony.sip.registration decides what to send and when to refresh). The
session refreshes we send are telephony.sip.refresh's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from telephony.media import MediaClock, RtpPortPool, RtpStream
from telephony.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_offer,
    parse_answer,
)
from telephony.sip.auth import Credentials, DigestAuthenticator
from telephony.sip.call import CallFailed, SipCall
from telephony.sip.dialog import AnswerRetransmitter, Dialog, DialogError
from telephony.sip.errors import SipParseError, SipUsageError
from telephony.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    generate_branch,
    generate_call_id,
    generate_tag,
    new_via,
    parse_cseq,
)
from telephony.sip.registration import Challenge, Failed, Registered, Registration, RegistrationEvent, Retry
from telephony.sip.session_timer import (
    SessionAgreement,
    SessionExpires,
    SessionTimerConfig,
    SessionTimers,
    offer_headers,
    parse_min_se,
    read_answer,
)
from telephony.sip.transaction import Addr, build_cancel
from telephony.sip.uas import ALLOW

if TYPE_CHECKING:
    from telephony.sip.ua import UserAgent

log = logging.getLogger(__name__)

OUTBOUND_USER_AGENT = "Switchboard/0.1"
MAX_422_RETRIES = 2  # RFC 4028 7.3: each 422 names a larger Min-SE; more than a proxy and the UAS is a loop


@dataclass(frozen=True, slots=True)
class SipTrunk:
    """A carrier or PBX we place calls through."""

    name: str
    host: str
    port: int = 5060
    transport: str = "UDP"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    realm: str | None = None
    from_uri: str | None = None  # e.g. "<sip:+15550100000@carrier.example>"; default: our own address

    @property
    def credentials(self) -> Credentials | None:
        if self.username is None or self.password is None:
            return None
        return Credentials(self.username, self.password, self.realm)


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """One binding to keep at a registrar (the agent as an extension on a PBX)."""

    registrar: str  # sip URI, e.g. "sip:pbx.example.com"
    aor: str  # e.g. "sip:1001@pbx.example.com"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    realm: str | None = None
    expires: int = 3600
    transport: str = "UDP"
    proxy: Addr | None = None  # send the REGISTER here instead of the registrar's host:port

    @property
    def credentials(self) -> Credentials | None:
        if self.username is None or self.password is None:
            return None
        return Credentials(self.username, self.password, self.realm)


class OutboundMixin:
    """The client half of UserAgent; the attributes and methods below are provided by UserAgent."""

    advertised_host: str
    user: str
    trunks: dict[str, SipTrunk]
    registration_configs: list[RegistrationConfig]
    calls: dict[str, SipCall]
    session_timer: SessionTimerConfig | None
    _pool: RtpPortPool
    _clock: MediaClock
    _bind_host: str
    _answers: AnswerRetransmitter
    _session_timers: SessionTimers

    if TYPE_CHECKING:

        async def transact(
            self,
            request: SipRequest,
            dest: Addr,
            transport: str,
            on_provisional: Callable[[SipResponse], None] | None = None,
            *,
            authenticator: DigestAuthenticator | None = None,
        ) -> SipResponse: ...

        def contact(self, transport: str) -> str: ...

        def sent_by(self, transport: str) -> Addr: ...

        def _now(self) -> float: ...

        def _register_call(self, call: SipCall) -> None: ...

        def _send_ack(self, call: SipCall, invite: SipRequest) -> None: ...

        def _spawn(self, coro: Awaitable[None]) -> None: ...

        def _flush(self) -> None: ...

        def _media_stream(
            self, negotiated: NegotiatedMedia, box: list[SipCall]
        ) -> Callable[[], RtpStream]: ...

        def _apply_media(
            self, call: SipCall, negotiated: NegotiatedMedia, previous: NegotiatedMedia | None
        ) -> None: ...

        async def send_bye(
            self, call: SipCall, reason: str = "bye", *, reason_header: str | None = None
        ) -> None: ...

    def __init__(self) -> None:
        self.registrations: list[Registration] = []
        self._registration_tasks: list[tuple[Registration, Addr, asyncio.Task[None]]] = []

    # --- requests that may be challenged ------------------------------------------------------------------
    async def exchange_authorized(
        self,
        request: SipRequest,
        dest: Addr,
        transport: str,
        authenticator: DigestAuthenticator | None,
        on_provisional: Callable[[SipResponse], None] | None = None,
        on_send: Callable[[SipRequest], None] | None = None,
    ) -> tuple[SipRequest, SipResponse]:
        """Send `request`, answering 401/407 challenges; returns the request that got the final response.
        `on_send` is told of each request as it goes out (a CANCEL must match the one on the wire)."""
        while True:
            if on_send is not None:
                on_send(request)
            response = await self.transact(
                request, dest, transport, on_provisional, authenticator=authenticator
            )
            if response.status not in (401, 407) or authenticator is None:
                return request, response
            retried = authenticator.authorize(request, response)
            if retried is None:
                return request, response  # wrong credentials or a realm we have none for: give up
            request = retried

    async def transact_authorized(
        self,
        request: SipRequest,
        dest: Addr,
        transport: str,
        authenticator: DigestAuthenticator | None = None,
    ) -> SipResponse:
        _, response = await self.exchange_authorized(request, dest, transport, authenticator)
        return response

    async def cancel_request(self, invite: SipRequest, dest: Addr, transport: str) -> None:
        """CANCEL a pending INVITE (9.1); its 487 ends the INVITE's own transaction."""
        with contextlib.suppress(CallFailed):
            await self.transact(build_cancel(invite), dest, transport)

    # --- outgoing calls -----------------------------------------------------------------------------------
    async def invite(
        self,
        target: str,
        *,
        from_uri: str | None = None,
        peer: Addr | None = None,
        credentials: Credentials | None = None,
        transport: str | None = None,
        trunk: str | None = None,
    ) -> SipCall:
        """Place a call; returns once it is answered and ACKed. Raises CallFailed or ValueError."""
        if trunk is not None:
            if trunk not in self.trunks:
                raise ValueError(f"no trunk named {trunk!r}")
            config = self.trunks[trunk]
            if not target.lower().startswith(("sip:", "sips:", "tel:")):
                target = f"sip:{target}@{config.host}"  # a bare number dialled through the trunk
            peer = peer or (config.host, config.port)
            transport = transport or config.transport
            credentials = credentials or config.credentials
            from_uri = from_uri or config.from_uri
        try:
            uri = SipUri.parse(target)
        except SipParseError as exc:
            raise ValueError(f"not a SIP URI: {target!r} ({exc.reason})") from None
        transport = (transport or uri.params.get("transport") or "udp").upper()
        if peer is None:
            if not uri.host:
                raise ValueError(f"{target!r} names no host to send to")
            peer = (uri.host, uri.port or (5061 if transport == "TLS" else 5060))
        from_uri = from_uri or f"<sip:{self.user}@{self.advertised_host}>"
        box: list[SipCall] = []
        # We offer PCMU only: the stream's codec is fixed when its socket opens, before the answer.
        probe = NegotiatedMedia(peer[0], 9, 0, "PCMU", 101, 20, "sendrecv")
        _, stream, port = await self._pool.open(self._bind_host, self._media_stream(probe, box))
        stream.set_direction("recvonly")  # nowhere to send until the answer says where
        session_id = random.getrandbits(31)
        offer = build_offer(
            local_host=self.advertised_host, local_port=port, session_id=session_id, codecs=("PCMU",)
        )
        request = self._initial_invite(target, from_uri, transport, bytes(offer))
        authenticator = DigestAuthenticator(credentials) if credentials is not None else None
        on_wire = request  # what a CANCEL has to match: a challenge or a 422 makes a new INVITE
        ringing = False

        def sending(sent: SipRequest) -> None:
            nonlocal on_wire, ringing
            on_wire, ringing = sent, False

        def provisional(_: SipResponse) -> None:
            nonlocal ringing
            ringing = True

        try:
            request, response = await self.exchange_authorized(
                request, peer, transport, authenticator, provisional, sending
            )
            for _ in range(MAX_422_RETRIES):
                retried = self._with_min_se(request, response)
                if retried is None:
                    break
                request, response = await self.exchange_authorized(
                    retried, peer, transport, authenticator, provisional, sending
                )
        except asyncio.CancelledError:
            stream.close()
            if ringing:  # 9.1: a CANCEL only once the INVITE got a provisional response
                self._spawn(self.cancel_request(on_wire, peer, transport))
            raise
        except BaseException:
            stream.close()
            raise
        if not 200 <= response.status < 300:
            stream.close()
            raise CallFailed(response.status, response.reason)
        return self._confirm_outbound(
            request, response, offer, stream, port, session_id, peer, transport, box, authenticator
        )

    def _initial_invite(self, target: str, from_uri: str, transport: str, body: bytes) -> SipRequest:
        headers = Headers()
        headers.add("Via", new_via(transport, *self.sent_by(transport)))
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{from_uri};tag={generate_tag()}")
        headers.add("To", f"<{target}>")
        headers.add("Call-ID", generate_call_id(self.advertised_host))
        headers.add("CSeq", f"{random.randint(1, 20000)} INVITE")
        headers.add("Contact", self.contact(transport))
        headers.add("Allow", ALLOW)  # RFC 3311 4: the callee learns it may send us UPDATE
        headers.add("User-Agent", OUTBOUND_USER_AGENT)
        if self.session_timer is not None:
            for name, value in offer_headers(self.session_timer.interval, self.session_timer.min_se):
                headers.add(name, value)
        headers.add("Content-Type", "application/sdp")
        return SipRequest("INVITE", target, headers, body)

    def _with_min_se(self, request: SipRequest, response: SipResponse) -> SipRequest | None:
        """RFC 4028 7.3: after a 422 the same INVITE again (CSeq + 1, new branch) asking for the interval
        its Min-SE names, and carrying that Min-SE; None when there is nothing to retry."""
        if response.status != 422 or self.session_timer is None:
            return None
        try:
            min_se = parse_min_se(response.headers["Min-SE"])
            offered = SessionExpires.parse(request.headers["Session-Expires"]).interval
            number, method = parse_cseq(request.headers["CSeq"])
            via = Via.parse(request.headers["Via"])
        except (KeyError, SipParseError):
            return None
        if min_se <= offered:
            return None  # asking again for the same would be refused the same way
        headers = request.headers.copy()
        headers.set(
            "Via", str(Via(via.transport, via.host, via.port, {**via.params, "branch": generate_branch()}))
        )
        headers.set("CSeq", f"{number + 1} {method}")
        for name, value in offer_headers(min_se, min_se):
            headers.set(name, value)
        return SipRequest(request.method, request.uri, headers, request.body)

    def _confirm_outbound(
        self,
        request: SipRequest,
        response: SipResponse,
        offer: SessionDescription,
        stream: RtpStream,
        port: int,
        session_id: int,
        peer: Addr,
        transport: str,
        box: list[SipCall],
        authenticator: DigestAuthenticator | None,
    ) -> SipCall:
        try:
            dialog = Dialog.from_uac(request, response)
        except DialogError as exc:
            stream.close()
            raise CallFailed(502, f"unusable 2xx: {exc.reason}") from None
        number = int(request.headers["CSeq"].split()[0])
        probe = NegotiatedMedia(peer[0], 9, 0, "PCMU", 101, 20, "recvonly")
        call = SipCall(
            call_id=dialog.call_id,
            direction="outbound",
            dialog=dialog,
            peer_addr=peer,
            transport=transport,
            negotiated=probe,
            media=stream,
            local_sdp=bytes(offer),
            invite_cseq=number,
            media_port=port,
            session_id=session_id,
            agent=cast("UserAgent", self),  # the mixin only ever exists as part of a UserAgent
            authenticator=authenticator,
        )
        box.append(call)
        call.note_allow(response)
        self._register_call(call)
        self._send_ack(call, request)
        try:
            negotiated = parse_answer(offer, SessionDescription.parse(response.body))
        except (SdpError, NoCommonCodec) as exc:
            call.state = "confirmed"
            self._spawn(self.send_bye(call, "bad-answer"))
            raise CallFailed(488, f"unusable SDP answer: {exc}") from exc
        self._apply_media(call, negotiated, previous=probe)
        call.state = "confirmed"
        dialog.state = "confirmed"
        call.confirmed.set()
        if self.session_timer is not None:
            self._start_session_timer(call, request, response, previous=None)
        return call

    def _start_session_timer(
        self, call: SipCall, request: SipRequest, response: SipResponse, previous: SessionAgreement | None
    ) -> None:
        """RFC 4028 7.2: the 2xx to our INVITE settles the session timer (or switches it off)."""
        try:
            min_se = parse_min_se(request.headers.get("Min-SE") or "0")
            agreement = read_answer(response, min_se=min_se, previous=previous)
        except SipParseError as exc:
            log.info(
                "call %s: bad Session-Expires in 2xx (%s); keeping the timer as it was", call.call_id, exc
            )
            agreement = previous
        if agreement is None:
            self._session_timers.stop(call.dialog.id)
        else:
            self._session_timers.start(call.dialog.id, agreement, self._now())
        self._flush()

    # --- registrations ------------------------------------------------------------------------------------
    def start_registrations(self) -> None:
        for config in self.registration_configs:
            transport = config.transport.upper()
            try:
                aor_user = SipUri.parse(config.aor).user or self.user
                host, port = self.sent_by(transport)
                host_text = f"[{host}]" if ":" in host else host
                suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
                registration = Registration(
                    registrar=config.registrar,
                    aor=config.aor,
                    contact=f"<sip:{aor_user}@{host_text}:{port}{suffix}>",
                    credentials=config.credentials,
                    expires=config.expires,
                    local_host=host,
                    local_port=port,
                    transport=transport,
                    user_agent=OUTBOUND_USER_AGENT,
                )
            except (SipParseError, SipUsageError) as exc:
                log.error("registration %s not started: %s", config.aor, exc)
                continue
            dest = config.proxy or registration.destination
            task = asyncio.ensure_future(self._keep_registered(registration, dest))
            self.registrations.append(registration)
            self._registration_tasks.append((registration, dest, task))

    async def _keep_registered(self, registration: Registration, dest: Addr) -> None:
        while True:
            event = await self._register_once(registration, registration.next_request(), dest)
            if isinstance(event, Registered):
                log.info("registered %s for %d s", registration.aor, event.expires)
            elif isinstance(event, Failed):
                log.warning("registration of %s failed: %s %s", registration.aor, event.status, event.reason)
            at = registration.refresh_at()
            if at is None:
                return
            await asyncio.sleep(max(0.0, at - self._now()))

    async def _register_once(
        self, registration: Registration, request: SipRequest, dest: Addr
    ) -> RegistrationEvent:
        while True:
            try:
                response = await self.transact(request, dest, registration.transport)
            except CallFailed:
                return registration.timed_out(self._now())
            event = registration.handle_response(response, self._now())
            if not isinstance(event, Challenge | Retry):
                return event
            request = event.request

    async def stop_registrations(self) -> None:
        """Cancel the refresh loops and remove our bindings (REGISTER with Expires: 0), briefly."""
        for _, _, task in self._registration_tasks:
            task.cancel()
        for registration, dest, task in self._registration_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if not registration.registered(self._now()) or registration.outstanding is not None:
                continue
            with contextlib.suppress(TimeoutError, SipUsageError, CallFailed):
                await asyncio.wait_for(
                    self._register_once(registration, registration.unregister(), dest), 2.0
                )
        self._registration_tasks.clear()
