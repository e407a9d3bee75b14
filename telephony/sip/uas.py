"""The answering half of the user agent (RFC 3261 section 13.3, RFC 3264): INVITE, ACK, re-INVITE, CANCEL.

An INVITE rings for `ring_ms`, gets its RTP port and is answered with SDP (an answer to its offer, or our
offer when it came without one: the answer then arrives in the ACK). Its 180 carries our To tag, so the
ringing time is an early dialog (RFC 3261 12.1.1), in which the caller may send UPDATE (RFC 3311 5.1) or hang
up with BYE (RFC 3261 15: the INVITE then gets 487, as after a CANCEL). A re-INVITE in the dialog puts the
media on hold or resumes it, or moves it to a new address; it never changes the codec in use; one without SDP
gets our offer in its 200, answered in the ACK. An RFC 3311 UPDATE does the same when it carries an offer
(answered in its 200), and nothing to the media when it does not. With session timers on, every INVITE and
re-INVITE, and every UPDATE once the call is answered, is also an RFC 4028 session refresh
(telephony.sip.session_timer): 422 below our Min-SE, otherwise a 2xx naming the interval and the refresher; an
unchanged SDP or none (a refresh) leaves the media stream as it was.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from telephony.jitter import PlayoutPolicy
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
from telephony.sip.call import HOLD_ADDRESSES, SipCall
from telephony.sip.dialog import AnswerRetransmitter, Dialog, DialogError, DialogId, dialog_id_for_request
from telephony.sip.errors import SipParseError
from telephony.sip.message import SipRequest, SipResponse, generate_tag, make_response, parse_cseq
from telephony.sip.session_timer import (
    TIMER_OPTION,
    IntervalTooSmall,
    SessionAgreement,
    SessionTimerConfig,
    SessionTimers,
    negotiate_as_uas,
    response_headers,
)
from telephony.sip.transaction import (
    Addr,
    RequestReceived,
    TransactionId,
    TransactionLayer,
    response_destination,
)

if TYPE_CHECKING:
    from telephony.sip.ua import UserAgent

log = logging.getLogger(__name__)

SERVER = "Switchboard/0.1"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY, UPDATE"
IncomingCallHandler = Callable[[SipCall], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Ringing:
    """An INVITE we have not answered yet (ringing for ring_ms, opening the RTP port)."""

    transaction: TransactionId
    request: SipRequest
    source: Addr
    transport: str
    dialog: Dialog
    offer: SessionDescription | None
    session: SessionAgreement | None = None  # the RFC 4028 session timer our 2xx sets up
    cancelled: bool = False


class UasMixin:
    """INVITE handling of UserAgent; the attributes and methods below are provided by UserAgent."""

    advertised_host: str
    max_calls: int
    ring_ms: int
    rtp_timeout_s: float | None
    playout: PlayoutPolicy | None
    session_timer: SessionTimerConfig | None
    calls: dict[str, SipCall]
    _pool: RtpPortPool
    _clock: MediaClock
    _bind_host: str
    _layer: TransactionLayer
    _answers: AnswerRetransmitter
    _on_call: IncomingCallHandler | None
    _ringing: dict[TransactionId, _Ringing]
    _dialogs: dict[DialogId, SipCall]
    _session_timers: SessionTimers
    _random: random.Random

    if TYPE_CHECKING:

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
        ) -> SipResponse: ...

        def contact(self, transport: str) -> str: ...

        def _now(self) -> float: ...

        def _flush(self) -> None: ...

        def _spawn(self, coro: Awaitable[None]) -> None: ...

        def _register_call(self, call: SipCall) -> None: ...

        def _on_rtp_timeout(self, call: SipCall) -> None: ...

        async def send_bye(
            self, call: SipCall, reason: str = "bye", *, reason_header: str | None = None
        ) -> None: ...

    def _refused(
        self, tid: TransactionId, request: SipRequest, check: Callable[[SipRequest], object]
    ) -> bool:
        """Whether a dialog's check of an in-dialog request failed; the request then has its answer."""
        try:
            check(request)
        except DialogError as exc:
            self._respond(tid, request, exc.status, exc.reason)
            return True
        return False

    def _on_invite(self, event: RequestReceived) -> None:
        request, tid = event.request, event.transaction
        call_id = request.headers["Call-ID"]
        if call_id in self.calls or any(
            r.request.headers["Call-ID"] == call_id for r in self._ringing.values()
        ):
            self._respond(tid, request, 482)  # 8.2.2.2: the same request forked back to us
            return
        if len(self.calls) + len(self._ringing) >= self.max_calls:
            self._respond(tid, request, 503, extra=[("Retry-After", "5")])  # at once: no 100 first
            return
        offer: SessionDescription | None = None
        if request.body:
            content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != "application/sdp":
                self._respond(tid, request, 415, extra=[("Accept", "application/sdp")])
                return
            try:
                offer = SessionDescription.parse(request.body)
                negotiate_answer(offer, local_host=self.advertised_host, local_port=9, session_id=1)
            except SdpError as exc:
                self._respond(tid, request, 400, _reason(f"Bad SDP: {exc}"))
                return
            except NoCommonCodec:
                self._respond(tid, request, 488, extra=[("Accept", "application/sdp")])
                return
        accepted, session = self._negotiate_session(tid, request)
        if not accepted:
            return
        local_tag = generate_tag()
        try:
            dialog = Dialog.from_uas(request, local_tag, local_seq=random.randint(1, 20000))
        except DialogError as exc:
            self._respond(tid, request, exc.status, exc.reason)
            return
        self._respond(tid, request, 100)
        self._respond(tid, request, 180, to_tag=local_tag, extra=[("Contact", self.contact(event.transport))])
        ringing = _Ringing(tid, request, event.source, event.transport, dialog, offer, session)
        self._ringing[tid] = ringing
        self._spawn(self._answer(ringing))

    def _media_stream(self, negotiated: NegotiatedMedia, box: list[SipCall]) -> Callable[[], RtpStream]:
        def make_stream() -> RtpStream:
            stream = RtpStream(
                self._clock,
                codec=negotiated.codec,
                payload_type=negotiated.payload_type,
                telephone_event_pt=negotiated.telephone_event_pt,
                remote=(negotiated.remote_host, negotiated.remote_port),
                on_audio=lambda frame: box[0].deliver_audio(frame) if box else None,
                on_dtmf=lambda digit: box[0].deliver_dtmf(digit) if box else None,
                playout=self.playout,
            )
            stream.rtp_timeout_s = self.rtp_timeout_s
            stream.on_timeout = lambda: self._on_rtp_timeout(box[0]) if box else None
            return stream

        return make_stream

    async def _answer(self, ringing: _Ringing) -> None:
        if self.ring_ms > 0:
            await asyncio.sleep(self.ring_ms / 1000)
        if ringing.cancelled:
            return
        request, offer = ringing.request, ringing.offer
        if offer is not None:
            _, probe = negotiate_answer(offer, local_host=self.advertised_host, local_port=9, session_id=1)
        else:
            # Late offer: we offer PCMU only, because the stream's codec is fixed before the answer arrives.
            probe = NegotiatedMedia(ringing.source[0], 9, 0, "PCMU", 101, 20, "sendrecv")
        box: list[SipCall] = []
        try:
            _, stream, port = await self._pool.open(self._bind_host, self._media_stream(probe, box))
        except OSError:
            self._ringing.pop(ringing.transaction, None)
            self._respond(ringing.transaction, request, 503, extra=[("Retry-After", "5")])
            self._flush()
            return
        if ringing.transaction not in self._ringing:  # CANCELled while the socket was being opened
            stream.close()
            return
        session_id = random.getrandbits(31)
        pending: SessionDescription | None = None
        if offer is not None:
            local, negotiated = negotiate_answer(
                offer, local_host=self.advertised_host, local_port=port, session_id=session_id
            )
        else:
            local = build_offer(
                local_host=self.advertised_host, local_port=port, session_id=session_id, codecs=("PCMU",)
            )
            negotiated, pending = probe, local
            stream.set_direction("recvonly")  # nothing to send to until the ACK brings the answer
        invite_cseq, _ = parse_cseq(request.headers["CSeq"])
        call = SipCall(
            call_id=request.headers["Call-ID"],
            direction="inbound",
            dialog=ringing.dialog,
            peer_addr=response_destination(request, ringing.source, ringing.transport),
            transport=ringing.transport,
            negotiated=negotiated,
            media=stream,
            local_sdp=bytes(local),
            invite_cseq=invite_cseq,
            media_port=port,
            session_id=session_id,
            agent=cast("UserAgent", self),  # the mixin only ever exists as part of a UserAgent
            pending_offer=pending,
            pending_offer_cseq=invite_cseq,
        )
        box.append(call)
        call.note_allow(request)
        if offer is not None:
            self._apply_media(call, negotiated, previous=None)
        self._ringing.pop(ringing.transaction, None)
        ok = self._ok(request, call, ringing.session)
        if self._layer.state(ringing.transaction) != "proceeding":
            stream.close()  # the transaction gave up meanwhile (TU guard, transport failure)
            return
        self._register_call(call)
        self._send_ok(ringing.transaction, call, ok, ringing.session)
        if self._on_call is not None:
            self._spawn(self._run_handler(call))

    def _answer_headers(self, transport: str, session: SessionAgreement | None) -> list[tuple[str, str]]:
        """What our 2xx to an INVITE, re-INVITE or UPDATE carries: Contact (all three are target refresh
        requests), Allow, Supported, and the session timer it sets up (RFC 4028 9)."""
        extra = [("Contact", self.contact(transport)), ("Allow", ALLOW)]
        if self.session_timer is not None:
            extra.append(("Supported", TIMER_OPTION))
        if session is not None:
            extra.extend(response_headers(session))
        return extra

    def _ok(self, request: SipRequest, call: SipCall, session: SessionAgreement | None) -> SipResponse:
        response = make_response(
            request,
            200,
            to_tag=call.local_tag,
            body=call.local_sdp,
            content_type="application/sdp",
            extra=self._answer_headers(call.transport, session),
        )
        response.headers.add("Server", SERVER)
        return response

    def _send_ok(
        self, tid: TransactionId, call: SipCall, ok: SipResponse, session: SessionAgreement | None
    ) -> None:
        now = self._now()
        self._layer.respond(tid, ok, now)
        number, _ = parse_cseq(ok.headers["CSeq"])
        # 13.3.1.4: the 2xx is ours to retransmit until the ACK, not the transaction's (RFC 6026).
        self._answers.start(call.dialog.id, number, bytes(ok), call.peer_addr, call.transport, now)
        if session is not None:
            self._session_timers.start(call.dialog.id, session, now)  # RFC 4028 10: from the 2xx on
        self._flush()

    def _negotiate_session(
        self, tid: TransactionId, request: SipRequest
    ) -> tuple[bool, SessionAgreement | None]:
        """RFC 4028 section 9 for an INVITE or re-INVITE: (False, None) once it has been refused."""
        if self.session_timer is None:
            return True, None
        try:
            outcome = negotiate_as_uas(request, self.session_timer)
        except SipParseError as exc:
            self._respond(tid, request, exc.status, exc.reason)
            return False, None
        if isinstance(outcome, IntervalTooSmall):
            self._respond(tid, request, 422, extra=outcome.headers)
            return False, None
        return True, outcome

    async def _run_handler(self, call: SipCall) -> None:
        assert self._on_call is not None
        await call.confirmed.wait()  # set by the ACK, or by the end of the call (no ACK, BYE, CANCEL)
        if call.state != "confirmed":
            return
        try:
            await self._on_call(call)
        finally:
            if call.state == "confirmed":
                await self.send_bye(call)

    def _apply_media(
        self, call: SipCall, negotiated: NegotiatedMedia, previous: NegotiatedMedia | None
    ) -> None:
        """Point the stream at what the latest offer/answer says (hold, resume, moved media)."""
        call.negotiated = negotiated
        held = negotiated.remote_host in HOLD_ADDRESSES or negotiated.remote_port == 0
        direction = "inactive" if held else negotiated.direction
        remote = (negotiated.remote_host, negotiated.remote_port)
        if not held and previous is not None and remote != (previous.remote_host, previous.remote_port):
            call.media.update_remote(remote)
        # An unchanged description (a session refresh, RFC 4028) leaves the stream as it is: setting the
        # same direction again would restart its RTP-timeout count.
        if direction != call.media.direction:
            call.media.set_direction(direction)

    def _on_ack(self, ack: SipRequest) -> None:
        try:
            dialog_id = dialog_id_for_request(ack)
            number, _ = parse_cseq(ack.headers["CSeq"])
        except SipParseError:
            return
        call = self._dialogs.get(dialog_id) if dialog_id is not None else None
        if call is None or not self._answers.acknowledge(call.dialog.id, number):
            return  # a retransmitted ACK, or one for a dialog that is gone
        if call.pending_offer is not None and number == call.pending_offer_cseq:
            offer, call.pending_offer = call.pending_offer, None
            if not ack.body and number != call.invite_cseq:
                # 13.2.1 puts the answer to the offer in our 2xx into the ACK, and there is none. Our offer
                # (`_offer_in_2xx`) described the session as it stands, so the peer's previous answer still
                # does: the session goes on as before, as after a re-INVITE that failed (14.1), rather than a
                # working call being ended. After a late-offer INVITE there is no session to go on with.
                log.info("call %s: no answer in the ACK to our offer; media as it was", call.call_id)
            else:
                try:
                    negotiated = parse_answer(offer, SessionDescription.parse(ack.body))
                except (SdpError, NoCommonCodec) as exc:
                    # An unusable answer (or none to a late-offer INVITE) can no longer be refused: BYE is
                    # the only way out, as 14.2 has the UAC do with an unusable offer in a 2xx.
                    log.info("call %s: unusable answer in ACK (%s); hanging up", call.call_id, exc)
                    call.state = "confirmed"
                    self._spawn(self.send_bye(call, "bad-answer"))
                    return
                self._apply_media(call, negotiated, previous=call.negotiated)
        if call.state == "early":
            call.state = "confirmed"
            call.dialog.state = "confirmed"
            call.confirmed.set()

    def _on_reinvite(self, call: SipCall, event: RequestReceived) -> None:
        request, tid = event.request, event.transaction
        if call.pending_offer is not None or call.reinvite_pending:
            # 14.2: our offer (late-offer 200, or our own refresh re-INVITE) still waits for its answer. A 2xx
            # that merely waits for its ACK after a completed offer/answer is no reason to refuse (RFC 5407
            # 3.1.5).
            self._respond(tid, request, 491)
            return
        accepted, session = self._negotiate_session(tid, request)
        if not accepted:
            return  # 422: the session goes on as it was
        if self._refused(tid, request, call.dialog.refresh_target):
            return
        call.note_allow(request)
        if request.body:
            if not self._answer_reoffer(call, tid, request):
                return
        else:
            offer = self._offer_in_2xx(call)
            call.local_sdp = bytes(offer)
            call.pending_offer, call.pending_offer_cseq = offer, parse_cseq(request.headers["CSeq"])[0]
        self._send_ok(tid, call, self._ok(request, call, session), session)

    def _offer_in_2xx(self, call: SipCall) -> SessionDescription:
        """The offer our 2xx carries when a re-INVITE came without one (RFC 3261 14.2): made as for a new
        call (sendrecv, whatever the media is now), but offering only the codec in use (the stream cannot
        change it) and keeping every m= line of our previous description in its place, refused ones with
        port 0 (RFC 3264 8, 8.2). Its o= version is the previous one when nothing changed, which is the
        usual case (a solicited offer as session refresh or 3pcc), and the next one otherwise (RFC 3264 8)."""
        previous = SessionDescription.parse(call.local_sdp)
        active = next(
            (i for i, media in enumerate(previous.media) if media.media == "audio" and media.port != 0), 0
        )

        def offer(version: int) -> SessionDescription:
            built = build_offer(
                local_host=self.advertised_host,
                local_port=call.media_port,
                session_id=call.session_id,
                session_version=version,
                codecs=(call.negotiated.codec,),
                telephone_event_pt=call.negotiated.telephone_event_pt or 101,
            )
            built.media = [built.media[0] if i == active else m for i, m in enumerate(previous.media)]
            return built

        unchanged = offer(call.sdp_version)
        if bytes(unchanged) == call.local_sdp:
            return unchanged
        call.sdp_version += 1
        return offer(call.sdp_version)

    def _on_update(self, call: SipCall, event: RequestReceived) -> None:
        """RFC 3311 UPDATE in one of our dialogs. Without a body it is an RFC 4028 session refresh and
        nothing else (RFC 4028 7.4 recommends just that): the session timer restarts as after a refresh
        re-INVITE, the media stream is not touched, so its RTP-timeout count goes on. With a body it is an
        offer, answered in the 200 exactly as a re-INVITE's offer would be."""
        request, tid = event.request, event.transaction
        if request.body and (call.pending_offer is not None or call.reinvite_pending):
            self._respond(tid, request, 491)  # RFC 3311 5.2: our own offer still waits for its answer
            return
        accepted, session = self._negotiate_session(tid, request)
        if not accepted:
            return  # 422: the session goes on as it was
        if self._refused(tid, request, call.dialog.refresh_target):  # a target refresh (RFC 3311 5.2)
            return
        call.note_allow(request)
        body, content_type = b"", None
        if request.body:
            if not self._answer_reoffer(call, tid, request):
                return
            body, content_type = call.local_sdp, "application/sdp"
        extra = self._answer_headers(call.transport, session)
        self._respond(tid, request, 200, body=body, content_type=content_type, extra=extra)
        if session is not None:
            self._session_timers.start(call.dialog.id, session, self._now())  # RFC 4028 10: from the 2xx on

    def _answer_reoffer(self, call: SipCall, tid: TransactionId, request: SipRequest) -> bool:
        """Answer the offer in a re-INVITE or UPDATE and apply it to the media; False once it has been
        refused (415, 400, or 488 for a codec other than the one in use: the call goes on as it was, 14.2)."""
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            self._respond(tid, request, 415, extra=[("Accept", "application/sdp")])
            return False
        try:
            offer = SessionDescription.parse(request.body)
            answer, negotiated = self._reanswer(call, offer, call.sdp_version)
            if bytes(answer) != call.local_sdp:  # RFC 3264 8: a changed description gets a new version
                call.sdp_version += 1
                answer, negotiated = self._reanswer(call, offer, call.sdp_version)
        except SdpError as exc:
            self._respond(tid, request, 400, _reason(f"Bad SDP: {exc}"))
            return False
        except NoCommonCodec:
            self._respond(tid, request, 488)
            return False
        call.local_sdp = bytes(answer)
        self._apply_media(call, negotiated, previous=call.negotiated)
        return True

    def _reanswer(
        self, call: SipCall, offer: SessionDescription, version: int
    ) -> tuple[SessionDescription, NegotiatedMedia]:
        # The stream cannot change codec mid-call, so a re-offer must keep the one in use.
        return negotiate_answer(
            offer,
            local_host=self.advertised_host,
            local_port=call.media_port,
            session_id=call.session_id,
            session_version=version,
            supported=(call.negotiated.codec,),
        )

    def _early_dialog(self, dialog_id: DialogId) -> _Ringing | None:
        """The INVITE still ringing whose 180 created this dialog (12.1.1), if any."""
        return next((r for r in self._ringing.values() if r.dialog.id == dialog_id), None)

    def _on_early_dialog_request(self, ringing: _Ringing, event: RequestReceived) -> None:
        """A request in the early dialog of an INVITE we have not answered yet. RFC 3311 lets the caller
        send UPDATE there (5.1), RFC 3261 15 lets it send BYE; a second INVITE cannot be taken before the
        first has its final response (14.2); anything else still gets 481, as before.

        An UPDATE without a body changes nothing but the target (it is a target refresh request, 5.2):
        200. It is no RFC 4028 session refresh either, there being no session yet: the session timer is
        set up by our 2xx to the INVITE. An UPDATE with an offer cannot be taken: our 180 carries no SDP and
        is not sent reliably (no RFC 3262), so the offer/answer exchange of the INVITE never completes while
        it rings, and the caller may offer in an UPDATE only once it has (5.1). To an INVITE with an offer
        we have not answered yet, 5.2 prescribes the reply: 500 with a Retry-After of 0 to 10 s. A
        late-offer INVITE (our offer is still to come, in the 2xx) gets the same: the caller's retry then
        finds the dialog confirmed, and its UPDATE is answered like a re-INVITE's offer."""
        request, tid = event.request, event.transaction
        if request.method not in ("UPDATE", "BYE", "INVITE"):
            self._respond(tid, request, 481)
            return
        if self._refused(tid, request, ringing.dialog.check_request):
            return
        if request.method == "BYE":
            # 15.1.2: the BYE gets its 2xx, the session attempt ends, and the INVITE still pending in the
            # dialog gets the RECOMMENDED 487, exactly as after a CANCEL: it is never answered now.
            self._respond(tid, request, 200)
            self._end_ringing(ringing)
            return
        if request.method == "INVITE" or request.body:
            if request.method == "UPDATE":
                content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if content_type != "application/sdp":
                    self._respond(tid, request, 415, extra=[("Accept", "application/sdp")])
                    return
            # RFC 3261 14.2 (a second INVITE before our final response to the first, lower CSeq) and RFC
            # 3311 5.2 (an offer in an UPDATE while the INVITE's is unanswered) prescribe the same reply.
            retry_after = str(self._random.randint(0, 10))
            reason = "Offer Pending" if request.method == "UPDATE" else "INVITE Pending"
            self._respond(tid, request, 500, reason, extra=[("Retry-After", retry_after)])
            return
        if self._refused(tid, request, ringing.dialog.refresh_target):
            return
        self._respond(tid, request, 200, extra=self._answer_headers(ringing.transport, None))

    def _on_cancel(self, event: RequestReceived) -> None:
        request, tid = event.request, event.transaction
        invite = self._layer.matching_invite(request)
        if invite is None:
            self._respond(tid, request, 481)  # 9.2: no transaction to cancel
            return
        self._respond(tid, request, 200)
        ringing = self._ringing.get(invite)
        if ringing is not None:
            self._end_ringing(ringing)

    def _end_ringing(self, ringing: _Ringing, status: int = 487) -> None:
        """A ringing INVITE will not be answered: the caller gave up (CANCEL, or BYE in its early dialog:
        487, 9.2 and 15.1.2) or we are shutting down (503, which without Retry-After sends the caller's
        proxy to another server, 21.5.4). `_answer` then finds it gone and never answers it; its RTP port,
        if already open, is closed there."""
        self._ringing.pop(ringing.transaction, None)
        ringing.cancelled = True
        self._respond(ringing.transaction, ringing.request, status, to_tag=ringing.dialog.local_tag)


def _reason(text: str) -> str:
    return " ".join(text.split())[:120]
