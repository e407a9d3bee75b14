"""The asyncio SIP user agent over UDP: a thin shell that feeds datagrams to the message layer and routes
them to calls.

Scope so far: answers INVITE (100, 180, 200 with SDP; 488 without a common codec; 503 over capacity),
handles ACK, BYE in both directions, CANCEL before answer and OPTIONS, and places calls as a UAC (used by
`switchboard call`). Retransmitted requests are answered from a per-transaction response cache; our own 2xx
and requests are retransmitted on RFC 3261 timers (T1 doubling up to T2, giving up after 64*T1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from telephony.media import MediaClock, RtpPortPool, RtpStream
from telephony.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    build_offer,
    negotiate_answer,
    parse_answer,
)
from telephony.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    parse_cseq,
    parse_message,
)

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0
TRANSACTION_TIMEOUT = 64 * T1
USER_AGENT = "Switchboard/0.1"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
Addr = tuple[str, int]
AudioSink = Callable[[bytes], None]
DigitSink = Callable[[str], None]


class CallFailed(Exception):
    """An outgoing call did not connect (final non-2xx response, or no response at all)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def _drop_audio(frame: bytes) -> None:
    """Audio that arrives before an agent is attached is not worth keeping (it is ringback-time noise)."""


def _drop_digit(digit: str) -> None:
    log.debug("DTMF %s before the agent was attached", digit)


@dataclass(slots=True, eq=False)
class SipCall:
    """One call's dialog and media; also the audio transport the agent session talks to."""

    call_id: str
    direction: str  # "inbound" | "outbound"
    local_tag: str
    local_uri: str  # our From (outbound) or To (inbound) header value, without tag
    remote_uri: str  # the other party's From/To header value
    remote_target: str  # the peer's Contact URI: where in-dialog requests go
    peer_addr: Addr
    route_set: list[str]
    negotiated: NegotiatedMedia
    media: RtpStream
    local_sdp: bytes
    remote_tag: str | None = None
    local_cseq: int = field(default_factory=lambda: random.randint(1, 20000))
    state: str = "early"  # early | confirmed | terminated
    hangup_by: str | None = None  # "caller" | "agent" once terminated
    started_at: float = field(default_factory=time.time)
    audio_sink: AudioSink = _drop_audio
    dtmf_sink: DigitSink = _drop_digit
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    agent: UserAgent | None = None

    @property
    def remote_number(self) -> str | None:
        """The user part of the remote party's URI: the caller's number on inbound calls."""
        try:
            return SipUri.parse(NameAddr.parse(self.remote_uri).uri).user
        except SipParseError:
            return None

    # --- the transport seam for the agent loop -------------------------------------------------------
    def play(self, pcm16: bytes) -> None:
        self.media.play(pcm16)

    def flush(self) -> int:
        return self.media.flush()

    async def wait_drained(self) -> None:
        await self.media.wait_drained()

    @property
    def frames_played(self) -> int:
        return self.media.frames_played

    async def hangup(self) -> None:
        if self.agent is not None:
            await self.agent.send_bye(self)

    def deliver_audio(self, frame: bytes) -> None:
        self.audio_sink(frame)

    def deliver_dtmf(self, digit: str) -> None:
        self.dtmf_sink(digit)


IncomingCallHandler = Callable[[SipCall], Awaitable[None]]


@dataclass(slots=True)
class _ServerTransaction:
    request: SipRequest
    source: Addr
    expires: float
    last_response: bytes | None = None


@dataclass(slots=True)
class _ClientTransaction:
    request: SipRequest
    dest: Addr
    responses: asyncio.Queue[SipResponse] = field(default_factory=asyncio.Queue)


class UserAgent(asyncio.DatagramProtocol):
    """SIP over UDP for every call of this process."""

    def __init__(
        self,
        *,
        advertised_host: str,
        port_pool: RtpPortPool,
        clock: MediaClock,
        on_call: IncomingCallHandler | None = None,
        max_calls: int = 200,
        user: str = "agent",
    ) -> None:
        self.advertised_host = advertised_host
        self.port = 0
        self._pool = port_pool
        self._clock = clock
        self._on_call = on_call
        self._max_calls = max_calls
        self._user = user
        self._transport: asyncio.DatagramTransport | None = None
        self._bind_host = "127.0.0.1"
        self.calls: dict[str, SipCall] = {}
        self._pending: dict[str, tuple[SipRequest, Addr, str]] = {}  # call-id -> INVITE not yet answered
        self._server_tx: dict[tuple[str, str, str], _ServerTransaction] = {}
        self._client_tx: dict[tuple[str, str], _ClientTransaction] = {}
        self._ack_waiters: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.malformed = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._bind_host = host
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.port = transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport, but has its interface.
        self._transport = cast(asyncio.DatagramTransport, transport)

    async def close(self) -> None:
        byes = [self.send_bye(call) for call in list(self.calls.values()) if call.state == "confirmed"]
        if byes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*byes, return_exceptions=True), 2.0)
        for task in list(self._tasks):
            task.cancel()
        for call in list(self.calls.values()):
            self._terminate(call, call.hangup_by or "agent")
        if self._transport is not None:
            self._transport.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    def _terminate(self, call: SipCall, by: str) -> None:
        if call.state == "terminated":
            return
        call.state = "terminated"
        call.hangup_by = by
        call.media.close()
        self.calls.pop(call.call_id, None)
        call.ended.set()
        log.info("call %s ended (hangup by %s)", call.call_id, by)

    # --- wire ---------------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if not data.strip(b"\r\n\t "):
            return  # RFC 5626 CRLF keep-alive
        try:
            message = parse_message(data)
            if isinstance(message, SipRequest):
                self._on_request(message, addr)
            else:
                self._on_response(message)
        except SipParseError as exc:
            self.malformed += 1
            log.info("malformed SIP from %s:%s: %s", addr[0], addr[1], exc.reason)
            partial = exc.partial
            if partial is not None and partial.method != "ACK":
                with contextlib.suppress(SipParseError):
                    self._send(bytes(make_response(partial, exc.status, exc.reason)), addr)

    def _send(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _respond(self, request: SipRequest, addr: Addr, response: SipResponse) -> bytes:
        response.headers.set("Server", USER_AGENT)
        raw = bytes(response)
        tx = self._server_tx.get(_server_key(request))
        if tx is not None:
            tx.last_response = raw
        self._send(raw, addr)
        return raw

    # --- server side --------------------------------------------------------------------------------
    def _on_request(self, request: SipRequest, addr: Addr) -> None:
        if request.method == "ACK":
            self._on_ack(request)
            return
        key = _server_key(request)
        now = time.monotonic()
        existing = self._server_tx.get(key)
        if existing is not None:
            # A retransmission: answered from the transaction, never acted on twice (RFC 3261 17.2).
            if existing.last_response is not None:
                self._send(existing.last_response, addr)
            return
        self._expire_transactions(now)
        self._server_tx[key] = _ServerTransaction(request, addr, expires=now + TRANSACTION_TIMEOUT)
        if request.method == "INVITE":
            self._on_invite(request, addr)
        elif request.method == "BYE":
            self._on_bye(request, addr)
        elif request.method == "CANCEL":
            self._on_cancel(request, addr)
        elif request.method == "OPTIONS":
            self._respond(
                request,
                addr,
                make_response(request, 200, extra=[("Allow", ALLOW), ("Accept", "application/sdp")]),
            )
        else:
            self._respond(request, addr, make_response(request, 405, extra=[("Allow", ALLOW)]))

    def _expire_transactions(self, now: float) -> None:
        if len(self._server_tx) < 512:
            return
        for key in [k for k, tx in self._server_tx.items() if tx.expires < now]:
            del self._server_tx[key]

    def _on_invite(self, request: SipRequest, addr: Addr) -> None:
        call_id = request.headers["Call-ID"]
        if NameAddr.parse(request.headers["To"]).tag is not None:
            # Re-INVITE in a dialog (session refresh, hold): keep our media as it is and re-offer it.
            call = self.calls.get(call_id)
            if call is None:
                self._respond(request, addr, make_response(request, 481))
                return
            self._respond(request, addr, _ok_with_sdp(request, call, self.advertised_host, self._user))
            return
        self._respond(request, addr, make_response(request, 100))
        if len(self.calls) + len(self._pending) >= self._max_calls:
            self._respond(request, addr, make_response(request, 503, extra=[("Retry-After", "5")]))
            return
        if not request.body:
            self._respond(request, addr, make_response(request, 488, "Offer Required In INVITE"))
            return
        try:
            offer = SessionDescription.parse(request.body)
            negotiate_answer(offer, local_host=self.advertised_host, local_port=9, session_id=1)
        except SdpError as exc:
            self._respond(request, addr, make_response(request, 400, _reason(f"Bad SDP: {exc}")))
            return
        except NoCommonCodec:
            self._respond(request, addr, make_response(request, 488))
            return
        local_tag = generate_tag()
        self._pending[call_id] = (request, addr, local_tag)
        self._respond(request, addr, make_response(request, 180, to_tag=local_tag))
        self._spawn(self._answer(request, addr, offer, local_tag))

    async def _answer(
        self, request: SipRequest, addr: Addr, offer: SessionDescription, local_tag: str
    ) -> None:
        call_id = request.headers["Call-ID"]
        box: list[SipCall] = []

        def make_stream() -> RtpStream:
            return RtpStream(
                self._clock,
                codec=probe.codec,
                payload_type=probe.payload_type,
                telephone_event_pt=probe.telephone_event_pt,
                remote=(probe.remote_host, probe.remote_port),
                on_audio=lambda frame: box[0].deliver_audio(frame) if box else None,
                on_dtmf=lambda digit: box[0].deliver_dtmf(digit) if box else None,
            )

        _, probe = negotiate_answer(offer, local_host=self.advertised_host, local_port=9, session_id=1)
        try:
            _, stream, port = await self._pool.open(self._bind_host, make_stream)
        except OSError:
            self._pending.pop(call_id, None)
            self._respond(request, addr, make_response(request, 503, extra=[("Retry-After", "5")]))
            return
        if call_id not in self._pending:  # CANCELled while the socket was being opened
            stream.close()
            return
        del self._pending[call_id]
        answer, negotiated = negotiate_answer(
            offer, local_host=self.advertised_host, local_port=port, session_id=random.getrandbits(31)
        )
        contact = request.headers.get("Contact")
        remote_uri = request.headers["From"]
        call = SipCall(
            call_id=call_id,
            direction="inbound",
            local_tag=local_tag,
            local_uri=request.headers["To"],
            remote_uri=remote_uri,
            remote_target=NameAddr.parse(contact).uri if contact else NameAddr.parse(remote_uri).uri,
            peer_addr=addr,
            route_set=request.headers.get_all("Record-Route"),
            negotiated=negotiated,
            media=stream,
            local_sdp=bytes(answer),
            remote_tag=NameAddr.parse(remote_uri).tag,
            agent=self,
        )
        box.append(call)
        self.calls[call_id] = call
        ok = self._respond(request, addr, _ok_with_sdp(request, call, self.advertised_host, self._user))
        self._spawn(self._retransmit_until_ack(call, ok, addr))
        if self._on_call is not None:
            self._spawn(self._run_handler(call))

    async def _retransmit_until_ack(self, call: SipCall, ok: bytes, addr: Addr) -> None:
        # RFC 3261 13.3.1.4: the UAS core retransmits 2xx until ACK; no ACK after 64*T1 ends the dialog.
        acked = self._ack_waiters.setdefault(call.call_id, asyncio.Event())
        interval = T1
        deadline = time.monotonic() + TRANSACTION_TIMEOUT
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(acked.wait(), interval)
                    return
                if call.state == "terminated":
                    return
                self._send(ok, addr)
                interval = min(interval * 2, T2)
            log.warning("no ACK for call %s; hanging up", call.call_id)
            await self.send_bye(call)
        finally:
            self._ack_waiters.pop(call.call_id, None)

    async def _run_handler(self, call: SipCall) -> None:
        assert self._on_call is not None
        try:
            await asyncio.wait_for(call.confirmed.wait(), TRANSACTION_TIMEOUT)
        except TimeoutError:
            return
        if call.state != "confirmed":
            return
        try:
            await self._on_call(call)
        finally:
            if call.state == "confirmed":
                await self.send_bye(call)

    def _on_ack(self, request: SipRequest) -> None:
        call = self.calls.get(request.headers.get("Call-ID") or "")
        if call is None or call.state != "early":
            return  # ACK for a non-2xx final response, or a retransmitted ACK
        call.state = "confirmed"
        call.confirmed.set()
        waiter = self._ack_waiters.get(call.call_id)
        if waiter is not None:
            waiter.set()

    def _on_bye(self, request: SipRequest, addr: Addr) -> None:
        call = self.calls.get(request.headers["Call-ID"])
        if call is None:
            self._respond(request, addr, make_response(request, 481))
            return
        self._respond(request, addr, make_response(request, 200))
        call.confirmed.set()
        self._terminate(call, "caller" if call.direction == "inbound" else "callee")

    def _on_cancel(self, request: SipRequest, addr: Addr) -> None:
        call_id = request.headers["Call-ID"]
        pending = self._pending.pop(call_id, None)
        if pending is None:
            # Too late (already answered) or unknown: RFC 3261 9.2 says 481 for no matching transaction.
            status = 200 if call_id in self.calls else 481
            self._respond(request, addr, make_response(request, status))
            return
        invite, invite_addr, local_tag = pending
        self._respond(request, addr, make_response(request, 200))
        self._respond(invite, invite_addr, make_response(invite, 487, to_tag=local_tag))

    # --- client side --------------------------------------------------------------------------------
    def _on_response(self, response: SipResponse) -> None:
        via = response.headers.get("Via")
        cseq = response.headers.get("CSeq")
        if via is None or cseq is None:
            return
        _, method = parse_cseq(cseq)
        tx = self._client_tx.get((Via.parse(via).branch or "", method))
        if tx is not None:
            tx.responses.put_nowait(response)
        elif method == "INVITE" and 200 <= response.status < 300:
            # A retransmitted 2xx: our ACK was lost, send it again (RFC 3261 13.2.2.4).
            call = self.calls.get(response.headers.get("Call-ID") or "")
            if call is not None:
                self._send_ack(call, response)

    def _new_request(self, method: str, call: SipCall) -> SipRequest:
        call.local_cseq += 1
        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP {self.advertised_host}:{self.port};branch={generate_branch()};rport")
        headers.add("Max-Forwards", "70")
        for route in call.route_set if call.direction == "inbound" else reversed(call.route_set):
            headers.add("Route", route)
        local = f"{call.local_uri};tag={call.local_tag}" if "tag=" not in call.local_uri else call.local_uri
        remote = call.remote_uri
        if call.remote_tag and "tag=" not in remote:
            remote = f"{remote};tag={call.remote_tag}"
        headers.add("From", local)
        headers.add("To", remote)
        headers.add("Call-ID", call.call_id)
        headers.add("CSeq", f"{call.local_cseq} {method}")
        headers.add("User-Agent", USER_AGENT)
        return SipRequest(method, call.remote_target, headers)

    def _destination(self, call: SipCall) -> Addr:
        # Symmetric signalling: the address the peer really sends from crosses NAT; a Contact behind NAT
        # would not be reachable.
        return call.peer_addr

    async def _transact(self, request: SipRequest, dest: Addr) -> SipResponse:
        """Run a client transaction: retransmit until a final response (timers A/B, E/F)."""
        branch = Via.parse(request.headers["Via"]).branch or ""
        tx = _ClientTransaction(request, dest)
        key = (branch, request.method)
        self._client_tx[key] = tx
        raw = bytes(request)
        deadline = time.monotonic() + TRANSACTION_TIMEOUT
        interval = T1
        provisional = False
        try:
            self._send(raw, dest)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallFailed(408, "Request Timeout")
                try:
                    response = await asyncio.wait_for(tx.responses.get(), min(interval, remaining))
                except TimeoutError:
                    if not provisional:
                        self._send(raw, dest)
                    interval = T2 if request.method != "INVITE" and provisional else min(interval * 2, T2)
                    continue
                if response.status < 200:
                    provisional = True
                    if request.method == "INVITE":
                        deadline = time.monotonic() + 180.0  # ringing may last: wait for the answer
                    continue
                return response
        finally:
            del self._client_tx[key]

    async def invite(self, target: str, *, from_uri: str, peer: Addr) -> SipCall:
        """Place a call; returns once the call is confirmed (2xx received and ACKed)."""
        call_id = generate_call_id(self.advertised_host)
        local_tag = generate_tag()
        box: list[SipCall] = []

        def make_stream() -> RtpStream:
            return RtpStream(
                self._clock,
                codec="PCMU",
                payload_type=0,
                telephone_event_pt=101,
                remote=peer,  # replaced once the answer names the real media address
                on_audio=lambda frame: box[0].deliver_audio(frame) if box else None,
                on_dtmf=lambda digit: box[0].deliver_dtmf(digit) if box else None,
            )

        _, stream, port = await self._pool.open(self._bind_host, make_stream)
        stream.sending = False
        offer = build_offer(
            local_host=self.advertised_host, local_port=port, session_id=random.getrandbits(31)
        )
        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP {self.advertised_host}:{self.port};branch={generate_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{from_uri};tag={local_tag}")
        headers.add("To", f"<{target}>")
        headers.add("Call-ID", call_id)
        cseq = random.randint(1, 20000)
        headers.add("CSeq", f"{cseq} INVITE")
        headers.add("Contact", f"<sip:{self._user}@{self.advertised_host}:{self.port}>")
        headers.add("User-Agent", USER_AGENT)
        headers.add("Content-Type", "application/sdp")
        request = SipRequest("INVITE", target, headers, bytes(offer))
        try:
            response = await self._transact(request, peer)
        except BaseException:
            stream.close()
            raise
        if not 200 <= response.status < 300:
            stream.close()
            self._send_ack_non2xx(request, response, peer)
            raise CallFailed(response.status, response.reason)
        try:
            negotiated = parse_answer(offer, SessionDescription.parse(response.body))
        except (SdpError, NoCommonCodec) as exc:
            stream.close()
            raise CallFailed(488, f"unusable SDP answer: {exc}") from exc
        stream.remote = (negotiated.remote_host, negotiated.remote_port)
        contact = response.headers.get("Contact")
        call = SipCall(
            call_id=call_id,
            direction="outbound",
            local_tag=local_tag,
            local_uri=from_uri,
            remote_uri=response.headers["To"],
            remote_target=NameAddr.parse(contact).uri if contact else target,
            peer_addr=peer,
            route_set=response.headers.get_all("Record-Route"),
            negotiated=negotiated,
            media=stream,
            local_sdp=bytes(offer),
            remote_tag=NameAddr.parse(response.headers["To"]).tag,
            local_cseq=cseq,
            agent=self,
        )
        box.append(call)
        self.calls[call_id] = call
        self._send_ack(call, response)
        call.state = "confirmed"
        call.confirmed.set()
        stream.sending = True
        return call

    def _send_ack(self, call: SipCall, response: SipResponse) -> None:
        ack = self._new_request("ACK", call)
        call.local_cseq -= 1  # an ACK for 2xx carries the INVITE's CSeq number (RFC 3261 13.2.2.4)
        cseq_number, _ = parse_cseq(response.headers["CSeq"])
        ack.headers.set("CSeq", f"{cseq_number} ACK")
        self._send(bytes(ack), self._destination(call))

    def _send_ack_non2xx(self, invite: SipRequest, response: SipResponse, dest: Addr) -> None:
        # RFC 3261 17.1.1.3: same branch as the INVITE, To from the response.
        headers = Headers()
        headers.add("Via", invite.headers["Via"])
        headers.add("Max-Forwards", "70")
        headers.add("From", invite.headers["From"])
        headers.add("To", response.headers["To"])
        headers.add("Call-ID", invite.headers["Call-ID"])
        cseq_number, _ = parse_cseq(invite.headers["CSeq"])
        headers.add("CSeq", f"{cseq_number} ACK")
        self._send(bytes(SipRequest("ACK", invite.uri, headers)), dest)

    async def send_bye(self, call: SipCall) -> None:
        """End a confirmed call from our side; the media stops at once, the BYE is retransmitted."""
        if call.state == "terminated":
            return
        if call.state == "early":
            call.state = "confirmed"  # no ACK came, but the dialog exists: BYE is still right
        bye = self._new_request("BYE", call)
        by = "agent" if call.direction == "inbound" else "caller"
        self._terminate(call, by)
        try:
            response = await self._transact(bye, self._destination(call))
            if response.status >= 300:
                log.info("BYE for %s answered %s %s", call.call_id, response.status, response.reason)
        except CallFailed as exc:
            log.info("BYE for %s got no answer: %s", call.call_id, exc)


def _server_key(request: SipRequest) -> tuple[str, str, str]:
    # RFC 3261 17.2.3: branch plus method identify a server transaction (ACK matches its INVITE; CANCEL
    # is its own transaction with the INVITE's branch).
    via = request.headers.get("Via") or ""
    branch = Via.parse(via).branch or ""
    method = "INVITE" if request.method == "ACK" else request.method
    return (branch, request.headers.get("Call-ID") or "", method)


def _ok_with_sdp(request: SipRequest, call: SipCall, host: str, user: str) -> SipResponse:
    assert call.agent is not None
    return make_response(
        request,
        200,
        to_tag=call.local_tag,
        body=call.local_sdp,
        content_type="application/sdp",
        extra=[
            ("Contact", f"<sip:{user}@{host}:{call.agent.port}>"),
            ("Allow", ALLOW),
        ],
    )


def _reason(text: str) -> str:
    return " ".join(text.split())[:120]
