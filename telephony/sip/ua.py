"""The asyncio SIP user agent: one timer and the sockets around the sans-IO transaction and dialog layers.

Everything protocol-shaped happens in `transaction` (retransmissions, timers A-M), `dialog` (CSeq, routes,
targets, 2xx until ACK, ACKs until the 2xx stops), `session_timer` (RFC 4028 refresh and expiry deadlines)
and `admission`; this shell feeds them datagrams and time, sends what they emit, and runs the call logic:
answering INVITEs (early and late offer), re-INVITEs and UPDATEs for hold/resume and session refreshes,
INFO DTMF, BYE/CANCEL, blind transfer with REFER, RTP timeouts, session expiry, and on the client side
INVITE with digest auth, REGISTER refreshes (`outbound`), our own session refreshes (`refresh`) and CANCEL,
and the ACK (and BYE) for every 2xx to our INVITEs that no call takes any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from telephony.jitter import PlayoutPolicy
from telephony.media import MediaClock, RtpPortPool
from telephony.sip.admission import AdmissionPolicy, Dropped, Refused
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.call import CallFailed, SipCall, TransferState, dtmf_from_info
from telephony.sip.dialog import (
    AnswerRetransmitter,
    DialogError,
    DialogId,
    SentAcks,
    SentInvites,
    answer_unwanted_2xx,
    dialog_id_for_request,
    dialog_id_for_response,
    invite_credentials,
)
from telephony.sip.errors import SipParseError
from telephony.sip.message import SipRequest, SipResponse, make_response, parse_cseq
from telephony.sip.outbound import OutboundMixin, RegistrationConfig, SipTrunk
from telephony.sip.refer import build_refer, parse_refer_notify
from telephony.sip.refresh import SessionRefreshMixin
from telephony.sip.session_timer import (
    MIN_SE_FLOOR,
    TIMER_OPTION,
    RefreshDue,
    SessionAgreement,
    SessionTimerConfig,
    SessionTimers,
)
from telephony.sip.transaction import (
    AckReceived,
    Addr,
    MessageRejected,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TimerConfig,
    TransactionEvent,
    TransactionId,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    client_transaction_id,
)
from telephony.sip.transport import SipTransports
from telephony.sip.uas import ALLOW, IncomingCallHandler, UasMixin, _Ringing

__all__ = ["CallFailed", "RegistrationConfig", "SipCall", "SipTrunk", "UserAgent"]

log = logging.getLogger(__name__)

USER_AGENT = "Switchboard/0.1"
ACCEPT_INFO = "application/dtmf-relay, application/dtmf"
_KNOWN_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK", "REFER"})
_DIALOG_METHODS = frozenset({"BYE", "INFO", "NOTIFY", "UPDATE"})
RTP_TIMEOUT_REASON = 'SIP;cause=408;text="RTP timeout"'
SESSION_EXPIRED_REASON = 'SIP;cause=408;text="Session expired"'
TRANSFER_TIMEOUT_S = 32.0
CLOSED_REASON = "user agent closed"


@dataclass(slots=True, eq=False)
class _ClientWaiter:
    request: SipRequest
    dest: Addr
    transport: str
    queue: asyncio.Queue[SipResponse | TransactionTimedOut | TransportFailed | _Closed]
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set once `transact` stops waiting


@dataclass(frozen=True, slots=True)
class _Closed:
    """Put to every client transaction's waiter by close(): its timers stop, so no answer can end it."""


@dataclass(frozen=True, slots=True)
class _SentInvite:
    """An INVITE of ours, kept for the 2xx that may still come when no call waits for it any more."""

    request: SipRequest
    dest: Addr
    transport: str
    authenticator: DigestAuthenticator | None  # for a challenge to the BYE that ends an unwanted dialog


class UserAgent(UasMixin, OutboundMixin, SessionRefreshMixin):
    """SIP over UDP (and TCP, and TLS when given a certificate) for every call of this process."""

    def __init__(
        self,
        *,
        advertised_host: str,
        port_pool: RtpPortPool,
        clock: MediaClock,
        on_call: IncomingCallHandler | None = None,
        max_calls: int = 200,
        user: str = "agent",
        timers: TimerConfig | None = None,
        allowlist: Sequence[str] = (),
        trunks: Sequence[SipTrunk] = (),
        registrations: Sequence[RegistrationConfig] = (),
        rtp_timeout_s: float | None = None,
        playout: PlayoutPolicy | None = None,
        session_expires: int | None = None,
        min_se: int = MIN_SE_FLOOR,
        ring_ms: int = 0,
        tcp: bool = True,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        tls_port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.advertised_host = advertised_host
        self._pool = port_pool
        self._clock = clock
        self._on_call = on_call
        self.max_calls = max_calls
        self.user = user
        self.timers = timers or TimerConfig()
        self.rtp_timeout_s = rtp_timeout_s
        self.playout = playout  # the jitter buffer policy of answered calls (None: PlayoutPolicy())
        # RFC 4028 session timers: the interval we ask for and the shortest we accept; None: off (the
        # extension is then unknown to us: no Supported: timer, and Require: timer gets 420).
        self.session_timer = SessionTimerConfig(session_expires, min_se) if session_expires else None
        self._session_timers = SessionTimers()
        self.ring_ms = ring_ms
        self.admission = AdmissionPolicy(allowlist=allowlist)
        self.trunks = {trunk.name: trunk for trunk in trunks}
        self.registration_configs = list(registrations)
        self._tcp = tcp
        self._tls_server = tls_server
        self._tls_port = tls_port
        self._layer = TransactionLayer(self.timers)
        self._answers = AnswerRetransmitter(self.timers)
        self._acks = SentAcks(self.timers.timeout_64t1)  # as long as a peer retransmits its 2xx (13.3.1.4)
        self._invites: SentInvites[_SentInvite] = SentInvites(self.timers.timeout_64t1)
        self._random = rng if rng is not None else random.Random()  # RFC 3261 14.1 glare waits (tests inject)
        self._transports = SipTransports(self._on_message, self._on_transport_error, client_ssl=tls_client)
        self._bind_host = "127.0.0.1"
        self.calls: dict[str, SipCall] = {}
        self._dialogs: dict[DialogId, SipCall] = {}
        self._ringing: dict[TransactionId, _Ringing] = {}
        self._client: dict[TransactionId, _ClientWaiter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        OutboundMixin.__init__(self)

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._transports.ports.get("UDP", 0)

    @property
    def ports(self) -> dict[str, int]:
        return dict(self._transports.ports)

    @property
    def malformed(self) -> int:
        return self._layer.malformed

    @property
    def open_transactions(self) -> int:
        return len(self._layer)

    async def start(self, host: str, port: int) -> None:
        """Listen on UDP `port` (TCP on the same number), TLS on `tls_port`; start the registrations."""
        self._loop = asyncio.get_running_loop()
        self._closed = False  # a user agent closed earlier may be started again
        self._bind_host = host
        udp_port = await self._transports.listen_udp(host, port)
        if self._tcp:
            try:
                await self._transports.listen_stream(host, udp_port)
            except OSError as exc:  # UDP is what carriers use: a busy TCP port must not stop the agent
                log.warning("SIP over TCP not available on %s:%d: %s", host, udp_port, exc)
        if self._tls_server is not None:
            await self._transports.listen_stream(host, self._tls_port, self._tls_server)
        self.start_registrations()

    async def close(self, grace_s: float = 2.0) -> None:
        """Refuse every INVITE still ringing here (503), CANCEL ours ringing out (their `invite()` then
        fails with the 487), BYE every confirmed call (waiting up to `grace_s` for all the answers),
        unregister, stop. Whatever still waits for a client transaction then (an INVITE that has had no
        provisional response, which 9.1 does not let us CANCEL) fails with CallFailed(503), as does every
        request sent from then on."""
        for ringing in list(self._ringing.values()):
            self._end_ringing(ringing, 503)
        self._flush()
        ringing_out = [
            waiter
            for tid, waiter in self._client.items()
            if waiter.request.method == "INVITE" and self._layer.state(tid) == "proceeding"
        ]
        # Each cancelled INVITE is waited for too: its 487 is what its invite() raises.
        cancels = [self.cancel_request(w.request, w.dest, w.transport) for w in ringing_out]
        cancelled = [w.done.wait() for w in ringing_out]
        byes = [
            self.send_bye(call, "shutdown") for call in list(self.calls.values()) if call.state == "confirmed"
        ]
        if byes or cancels:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*cancels, *cancelled, *byes, return_exceptions=True), grace_s
                )
        await self.stop_registrations()
        for task in list(self._tasks):
            task.cancel()
        for call in list(self.calls.values()):
            self._terminate(call, call.hangup_by or self._local_party(call), "shutdown")
        if self._timer is not None:
            self._timer.cancel()
        self._closed = True
        for waiter in self._client.values():
            waiter.queue.put_nowait(_Closed())
        await self._transports.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    @staticmethod
    def _local_party(call: SipCall) -> str:
        return "agent" if call.direction == "inbound" else "caller"

    def _terminate(self, call: SipCall, by: str, reason: str) -> None:
        if call.state == "terminated":
            return
        call.state = "terminated"
        call.dialog.state = "terminated"
        call.hangup_by = by
        call.end_reason = reason
        call.media.close()
        self.calls.pop(call.call_id, None)
        self._dialogs.pop(call.dialog.id, None)
        self._answers.cancel(call.dialog.id)
        self._session_timers.stop(call.dialog.id)
        if call.transfer_state is not None and not call.transfer_state.result.done():
            call.transfer_state.result.set_result(False)
        call.confirmed.set()
        call.ended.set()
        log.info("call %s ended (%s, hangup by %s)", call.call_id, reason, by)

    def _register_call(self, call: SipCall) -> None:
        self.calls[call.call_id] = call
        self._dialogs[call.dialog.id] = call

    # --- the shell: bytes and time in, bytes out ----------------------------------------------------------
    def _on_message(self, data: bytes, source: Addr, transport: str) -> None:
        now = self._now()
        if self.admission.blocked(source[0], now):
            return
        self._handle(self._layer.receive_data(data, source, transport, now), now)
        self._flush()

    def _on_transport_error(self, dest: Addr, transport: str) -> None:
        now = self._now()
        self._handle(self._layer.transport_error(dest, transport, now), now)
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        events = self._layer.tick(now)
        resend, expired = self._answers.tick(now)
        for outgoing in resend:
            self._transports.send(outgoing.data, outgoing.dest, outgoing.transport)
        for dialog_id in expired:
            call = self._dialogs.get(dialog_id)
            if call is not None:
                # 13.3.1.4: no ACK for our 2xx within 64*T1: the dialog is ended with BYE.
                log.warning("no ACK for call %s; hanging up", call.call_id)
                self._spawn(self.send_bye(call, "no-ack"))
        for timer_event in self._session_timers.tick(now):
            call = self._dialogs.get(timer_event.dialog)
            if call is None:
                continue
            if isinstance(timer_event, RefreshDue):
                self._spawn(self.refresh_session(call))
            else:
                log.info("call %s: session expired without a refresh; hanging up", call.call_id)
                self._spawn(self.send_bye(call, "session-expired", reason_header=SESSION_EXPIRED_REASON))
        self._handle(events, now)
        self._flush()

    def _flush(self) -> None:
        for outgoing in self._layer.pop_outgoing():
            self._transports.send(outgoing.data, outgoing.dest, outgoing.transport)
        deadlines = [
            d
            for d in (self._layer.next_timer(), self._answers.next_timer(), self._session_timers.next_timer())
            if d is not None
        ]
        if not deadlines:
            return
        deadline = min(deadlines)
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # an earlier wake-up re-arms for this one
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = (self._loop or asyncio.get_running_loop()).call_at(deadline, self._on_timer)

    def _handle(self, events: list[TransactionEvent], now: float) -> None:
        for event in events:
            if isinstance(event, RequestReceived):
                self._on_request(event, now)
            elif isinstance(event, AckReceived):
                self._on_ack(event.request)
            elif isinstance(event, ResponseReceived):
                waiter = self._client.get(event.transaction)
                if waiter is not None:
                    waiter.queue.put_nowait(event.response)
                else:
                    self._on_unclaimed_2xx(event.response)
            elif isinstance(event, StrayResponse):
                self._on_unclaimed_2xx(event.response)
            elif isinstance(event, TransactionTimedOut | TransportFailed):
                self._on_transaction_failure(event)
            elif isinstance(event, TransactionTerminated):
                self._invites.ended(event.transaction, now)
                self._ringing.pop(event.transaction, None)
                waiter = self._client.pop(event.transaction, None)
                if waiter is not None:  # never left waiting for a response that cannot come any more
                    waiter.queue.put_nowait(TransactionTimedOut(event.transaction, waiter.request, "gone"))
            elif isinstance(event, MessageRejected):
                log.info("rejected SIP from %s:%s: %s %s", *event.source, event.status, event.reason)

    def _on_transaction_failure(self, event: TransactionTimedOut | TransportFailed) -> None:
        waiter = self._client.get(event.transaction)
        if isinstance(event, TransactionTimedOut) and event.timer == "C" and waiter is not None:
            self._spawn(self.cancel_request(waiter.request, waiter.dest, waiter.transport))
            return
        if waiter is not None:
            waiter.queue.put_nowait(event)
        ringing = self._ringing.pop(event.transaction, None)
        if ringing is not None:
            ringing.cancelled = True

    def _respond(
        self,
        transaction: TransactionId,
        request: SipRequest,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> SipResponse:
        response = make_response(
            request, status, reason, to_tag=to_tag, body=body, content_type=content_type, extra=extra
        )
        response.headers.add("Server", USER_AGENT)
        self._layer.respond(transaction, response, self._now())
        return response

    def contact(self, transport: str) -> str:
        host = f"[{self.advertised_host}]" if ":" in self.advertised_host else self.advertised_host
        suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"<sip:{self.user}@{host}:{self._transports.ports.get(transport, self.port)}{suffix}>"

    def sent_by(self, transport: str) -> Addr:
        return (self.advertised_host, self._transports.ports.get(transport, self.port))

    # --- client transactions ------------------------------------------------------------------------------
    async def transact(
        self,
        request: SipRequest,
        dest: Addr,
        transport: str,
        on_provisional: Callable[[SipResponse], None] | None = None,
        *,
        authenticator: DigestAuthenticator | None = None,
    ) -> SipResponse:
        """Run one client transaction to its final response; CallFailed(408/503) when none comes.

        An INVITE is also remembered for as long as a 2xx to it may arrive, so that one arriving when
        nothing waits for it any more still gets its ACK (and its dialog a BYE; `authenticator` answers a
        challenge to that BYE): see `_on_unclaimed_2xx`.
        """
        if self._closed:
            raise CallFailed(503, CLOSED_REASON)
        tid = self._layer.send_request(request, dest, transport, self._now())
        waiter = _ClientWaiter(request, dest, transport.upper(), asyncio.Queue())
        self._client[tid] = waiter
        if request.method == "INVITE":
            self._invites.sent(tid, _SentInvite(request, dest, waiter.transport, authenticator))
        self._flush()
        try:
            while True:
                item = await waiter.queue.get()
                if isinstance(item, SipResponse):
                    if item.status >= 200:
                        return item
                    if on_provisional is not None:
                        on_provisional(item)
                elif isinstance(item, TransactionTimedOut):
                    raise CallFailed(408, "Request Timeout")
                elif isinstance(item, _Closed):
                    raise CallFailed(503, CLOSED_REASON)
                else:
                    raise CallFailed(503, "Transport Error")
        finally:
            self._client.pop(tid, None)
            waiter.done.set()

    def _send_ack(self, call: SipCall, invite: SipRequest) -> None:
        """ACK the 2xx to our INVITE (13.2.2.4: a new request with the INVITE's CSeq number and
        credentials), remembered for its retransmissions even when the call ends meanwhile."""
        transport = call.transport
        invite_cseq, _ = parse_cseq(invite.headers["CSeq"])
        ack = call.dialog.create_ack(
            invite_cseq,
            transport=transport,
            sent_by=self.sent_by(transport),
            headers=invite_credentials(invite),
        )
        call.ack, call.ack_cseq = bytes(ack), invite_cseq
        outgoing = Outgoing(call.ack, call.peer_addr, call.transport)
        self._acks.remember(call.dialog.id, invite_cseq, outgoing, self._now())
        self._transports.send(outgoing.data, outgoing.dest, outgoing.transport)

    def _on_unclaimed_2xx(self, response: SipResponse) -> None:
        """A 2xx to one of our INVITEs that no call waits for: the UAC core ACKs every one (13.2.2.4,
        17.1.1.2). A retransmission of one we ACKed means our ACK was lost: the same ACK again. The first
        copy of one that came too late (after Timer B, after the INVITE was given up or CANCELled, while
        closing) or from a second UAS the INVITE forked to is ACKed, and the dialog it made ended with
        BYE, once: its retransmissions then find the ACK above."""
        if not 200 <= response.status < 300:
            return
        try:
            number, method = parse_cseq(response.headers["CSeq"])
            dialog_id = dialog_id_for_response(response)
            tid = client_transaction_id(response)
        except (KeyError, SipParseError):
            return
        if method != "INVITE" or dialog_id is None:
            return
        now = self._now()
        ack = self._acks.lookup(dialog_id, number, now)
        if ack is not None:
            self._transports.send(ack.data, ack.dest, ack.transport)
            return
        sent = self._invites.lookup(tid, now)
        if sent is None:
            return  # not an INVITE of ours, or one whose 2xx can no longer come
        try:
            unwanted = answer_unwanted_2xx(
                sent.request,
                response,
                transport=sent.transport,
                sent_by=self.sent_by(sent.transport),
                headers=[("User-Agent", USER_AGENT)],
            )
        except (DialogError, SipParseError) as exc:
            log.info("2xx to INVITE %s with no call to take it cannot be ACKed: %s", dialog_id.call_id, exc)
            return
        outgoing = Outgoing(bytes(unwanted.ack), sent.dest, sent.transport)
        self._acks.remember(dialog_id, number, outgoing, now)
        self._transports.send(outgoing.data, outgoing.dest, outgoing.transport)
        if unwanted.bye is not None:
            log.info("2xx to INVITE %s with no call to take it: ACK, then BYE", dialog_id.call_id)
            self._spawn(self._end_unwanted_dialog(unwanted.bye, sent))

    async def _end_unwanted_dialog(self, bye: SipRequest, sent: _SentInvite) -> None:
        try:
            response = await self.transact_authorized(bye, sent.dest, sent.transport, sent.authenticator)
        except CallFailed as exc:
            log.info("BYE for unwanted dialog %s got no answer: %s", bye.headers["Call-ID"], exc)
            return
        if response.status >= 300:
            log.info("BYE for unwanted dialog %s answered %s", bye.headers["Call-ID"], response.status)

    # --- server side: dispatch ----------------------------------------------------------------------------
    def _on_request(self, event: RequestReceived, now: float) -> None:
        request, tid = event.request, event.transaction
        verdict = self.admission.check(request, event.source[0], now)
        if isinstance(verdict, Dropped):
            log.info("dropped %s from %s: %s", request.method, event.source[0], verdict.reason)
            self._layer.discard(tid)
            return
        if isinstance(verdict, Refused):
            self._respond(tid, request, verdict.status, verdict.reason)
            return
        required = [item for item in request.headers.get_all("Require") if item and not self._supports(item)]
        if required and request.method != "CANCEL":
            # 8.2.2.3: the only extension a peer may require is RFC 4028's, when session timers are on.
            self._respond(tid, request, 420, extra=[("Unsupported", ", ".join(required))])
            return
        try:
            dialog_id = dialog_id_for_request(request)
        except SipParseError as exc:
            self._respond(tid, request, 400, exc.reason)
            return
        method = request.method
        if method == "CANCEL":
            self._on_cancel(event)
        elif dialog_id is not None:
            call = self._dialogs.get(dialog_id)
            if call is None:
                ringing = self._early_dialog(dialog_id)
                if ringing is not None:
                    self._on_early_dialog_request(ringing, event)
                else:
                    self._respond(tid, request, 481)
                return
            if self._refused(tid, request, call.dialog.check_request):
                return
            self._on_dialog_request(call, event)
        elif method == "INVITE":
            self._on_invite(event)
        elif method == "OPTIONS":
            self._respond(tid, request, 200, extra=self._capabilities())
        elif method in _DIALOG_METHODS:
            self._respond(tid, request, 481)  # they exist only inside a dialog, and there is none
        elif method in _KNOWN_METHODS:
            self._respond(tid, request, 405, extra=[("Allow", ALLOW)])
        else:
            self._respond(tid, request, 501, extra=[("Allow", ALLOW)])

    def _supports(self, option: str) -> bool:
        return self.session_timer is not None and option.lower() == TIMER_OPTION

    def _capabilities(self) -> list[tuple[str, str]]:
        capabilities = [("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Language", "en")]
        if self.session_timer is not None:
            capabilities.append(("Supported", TIMER_OPTION))
        return capabilities

    def session_agreement(self, call: SipCall) -> SessionAgreement | None:
        """The RFC 4028 session timer of a call (interval, who refreshes), or None when it has none."""
        return self._session_timers.agreement(call.dialog.id)

    def _on_dialog_request(self, call: SipCall, event: RequestReceived) -> None:
        request, tid = event.request, event.transaction
        method = request.method
        if method == "BYE":
            self._respond(tid, request, 200)
            self._terminate(call, "caller" if call.direction == "inbound" else "callee", "bye")
        elif method == "INVITE":
            self._on_reinvite(call, event)
        elif method == "UPDATE":
            self._on_update(call, event)
        elif method == "INFO":
            try:
                digit = dtmf_from_info(request)
            except SipParseError as exc:
                extra = [("Accept", ACCEPT_INFO)] if exc.status == 415 else None
                self._respond(tid, request, exc.status, exc.reason, extra=extra)
                return
            self._respond(tid, request, 200)
            if digit is not None:
                call.deliver_dtmf(digit)
        elif method == "NOTIFY":
            self._on_notify(call, event)
        elif method == "OPTIONS":
            self._respond(tid, request, 200, extra=self._capabilities())
        else:
            self._respond(tid, request, 405 if method in _KNOWN_METHODS else 501, extra=[("Allow", ALLOW)])

    # --- server side: INVITE ------------------------------------------------------------------------------
    def _on_notify(self, call: SipCall, event: RequestReceived) -> None:
        request, tid = event.request, event.transaction
        state = call.transfer_state
        if state is None:
            self._respond(tid, request, 481, "Subscription Does Not Exist")
            return
        try:
            progress = parse_refer_notify(request)
        except SipParseError as exc:
            self._respond(tid, request, exc.status, exc.reason)
            return
        self._respond(tid, request, 200)
        if progress.final and not state.result.done():
            state.result.set_result(progress.succeeded)

    def _on_rtp_timeout(self, call: SipCall) -> None:
        if call.state == "confirmed":
            log.info("call %s: no RTP for %s s; hanging up", call.call_id, self.rtp_timeout_s)
            self._spawn(self.send_bye(call, "rtp-timeout", reason_header=RTP_TIMEOUT_REASON))

    # --- in-dialog requests we send -----------------------------------------------------------------------
    async def send_bye(self, call: SipCall, reason: str = "bye", *, reason_header: str | None = None) -> None:
        """End a call from our side; the media stops at once, the BYE is retransmitted until answered."""
        if call.state == "terminated":
            return
        headers = [("User-Agent", USER_AGENT)]
        if reason_header is not None:
            headers.append(("Reason", reason_header))
        bye = call.dialog.create_request(
            "BYE", transport=call.transport, sent_by=self.sent_by(call.transport), headers=headers
        )
        self._terminate(call, self._local_party(call), reason)
        try:
            response = await self.transact_authorized(bye, call.peer_addr, call.transport, call.authenticator)
            if response.status >= 300:
                log.info("BYE for %s answered %s %s", call.call_id, response.status, response.reason)
        except CallFailed as exc:
            log.info("BYE for %s got no answer: %s", call.call_id, exc)

    async def transfer(self, call: SipCall, target: str) -> bool:
        """Blind transfer (RFC 3515): REFER, 202, NOTIFY sipfrag; on success our leg ends with BYE."""
        if call.state != "confirmed" or call.transfer_state is not None:
            return False
        dialog = call.dialog
        dialog.local_seq += 1
        refer = build_refer(
            call_id=call.call_id,
            local_uri=dialog.local_uri,
            local_tag=dialog.local_tag,
            remote_uri=dialog.remote_uri,
            remote_tag=dialog.remote_tag,
            remote_target=dialog.remote_target,
            cseq=dialog.local_seq,
            local_host=self.advertised_host,
            local_port=self.sent_by(call.transport)[1],
            contact=self.contact(call.transport),
            refer_to=target,
            route_set=dialog.route_set,
            transport=call.transport,
            user_agent=USER_AGENT,
        )
        state = TransferState(asyncio.get_running_loop().create_future())
        call.transfer_state = state
        try:
            response = await self.transact(refer, call.peer_addr, call.transport)
            if not 200 <= response.status < 300:
                log.info("REFER for %s refused: %s %s", call.call_id, response.status, response.reason)
                return False
            succeeded = await asyncio.wait_for(asyncio.shield(state.result), TRANSFER_TIMEOUT_S)
        except (CallFailed, TimeoutError):
            return False
        finally:
            call.transfer_state = None
        if succeeded:
            await self.send_bye(call, "transfer")
        return succeeded


def _reason(text: str) -> str:
    return " ".join(text.split())[:120]
