"""Our own RFC 4028 session refreshes: the request that keeps a session alive when we are its refresher,
and what its final response does to the call (telephony.sip.session_timer says when one is due).

The refresh is an UPDATE without a body when the peer listed UPDATE in its Allow: RFC 4028 7.4 recommends
an UPDATE that carries no offer, so there is no offer/answer to collide with the peer's re-INVITEs and
nothing for the media to do. Otherwise it is a re-INVITE offering our SDP unchanged, same o= version, so
the media stays as it is too (RFC 3264 8). Either way its 2xx restarts the session timer (sections 7.4 and
10). Every 2xx to a refresh re-INVITE is ACKed, even one that comes after our BYE (RFC 3261 13.2.2.4); the
call then stays ended. One that comes only after the refresh timed out (and so after the BYE that ended the
call) is ACKed by the user agent (`UserAgent._on_unclaimed_2xx`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from telephony.sdp import NegotiatedMedia, NoCommonCodec, SdpError, SessionDescription, parse_answer
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.call import CallFailed, SipCall
from telephony.sip.dialog import AnswerRetransmitter, DialogError, glare_retry_delay
from telephony.sip.errors import SipParseError
from telephony.sip.message import SipRequest, SipResponse, parse_cseq
from telephony.sip.session_timer import (
    SessionAgreement,
    SessionTimers,
    after_refused_refresh,
    offer_headers,
    parse_min_se,
    refresh_retry_at,
)
from telephony.sip.transaction import Addr
from telephony.sip.uas import ALLOW

log = logging.getLogger(__name__)

REFRESH_USER_AGENT = "Switchboard/0.1"
_BUSY_RETRY_S = 1.0  # another INVITE transaction of the dialog is in progress: look again this much later


class SessionRefreshMixin:
    """The refresher side of UserAgent; the attributes and methods below are provided by UserAgent."""

    _answers: AnswerRetransmitter
    _session_timers: SessionTimers
    _random: random.Random

    if TYPE_CHECKING:

        def contact(self, transport: str) -> str: ...

        def sent_by(self, transport: str) -> Addr: ...

        def _now(self) -> float: ...

        def _flush(self) -> None: ...

        def _spawn(self, coro: Awaitable[None]) -> None: ...

        def _send_ack(self, call: SipCall, invite: SipRequest) -> None: ...

        def _apply_media(
            self, call: SipCall, negotiated: NegotiatedMedia, previous: NegotiatedMedia | None
        ) -> None: ...

        def _start_session_timer(
            self,
            call: SipCall,
            request: SipRequest,
            response: SipResponse,
            previous: SessionAgreement | None,
        ) -> None: ...

        async def exchange_authorized(
            self,
            request: SipRequest,
            dest: Addr,
            transport: str,
            authenticator: DigestAuthenticator | None,
            on_provisional: Callable[[SipResponse], None] | None = None,
        ) -> tuple[SipRequest, SipResponse]: ...

        async def send_bye(
            self, call: SipCall, reason: str = "bye", *, reason_header: str | None = None
        ) -> None: ...

    async def refresh_session(self, call: SipCall) -> None:
        """Send the refresh that is due and act on its outcome."""
        dialog_id = call.dialog.id
        agreement = self._session_timers.agreement(dialog_id)
        if agreement is None or call.state == "terminated":
            return
        method = "UPDATE" if "UPDATE" in call.peer_allow else "INVITE"
        if call.state != "confirmed" or (method == "INVITE" and self._invite_in_progress(call)):
            # 14.1: no new INVITE while another INVITE transaction of the dialog is still in progress.
            self._session_timers.refresh_later(dialog_id, self._now() + _BUSY_RETRY_S)
            self._flush()
            return
        outcome = await self._refresh_exchange(call, agreement, method)
        if not isinstance(outcome, int):
            sent, response = outcome
            if sent.method == "INVITE":
                self._send_ack(call, sent)  # also when our BYE went first
            if call.state != "terminated":
                self._confirm_refresh(call, sent, response, agreement)
            return
        if call.state == "terminated":
            return
        verdict = after_refused_refresh(outcome, method)
        if verdict == "end":
            log.info("call %s: session refresh failed (%s); hanging up", call.call_id, outcome)
            self._spawn(self.send_bye(call, "session-refresh-failed"))
            return
        now = self._now()
        if verdict == "reinvite":
            log.info("call %s: UPDATE refused (%s); refreshing with re-INVITE", call.call_id, outcome)
            call.peer_allow = call.peer_allow - {"UPDATE"}
            self._session_timers.refresh_later(dialog_id, now)
        else:
            wait = glare_retry_delay(call.owns_call_id, self._random.randint) if verdict == "glare" else None
            retry_at = refresh_retry_at(now, self._session_timers.expires_at(dialog_id) or now, wait)
            if retry_at is not None:
                self._session_timers.refresh_later(dialog_id, retry_at)
        self._flush()

    def _invite_in_progress(self, call: SipCall) -> bool:
        dialog_id = call.dialog.id
        return call.pending_offer is not None or call.reinvite_pending or self._answers.waiting(dialog_id)

    async def _refresh_exchange(
        self, call: SipCall, agreement: SessionAgreement, method: str
    ) -> tuple[SipRequest, SipResponse] | int:
        """Our refresh and its 2xx, or the status that refused it (408/503 when nothing came back). A 422
        is answered once with the longer interval it asks for (RFC 4028 7.3)."""
        interval, min_se = agreement.interval, agreement.min_se
        try:
            sent, response = await self._send_refresh(call, method, interval, min_se)
            if response.status == 422 and call.state != "terminated":
                try:
                    larger = parse_min_se(response.headers["Min-SE"])
                except (KeyError, SipParseError):
                    larger = 0
                if larger > interval:
                    sent, response = await self._send_refresh(call, method, larger, max(min_se, larger))
        except CallFailed as exc:
            return exc.status
        return (sent, response) if 200 <= response.status < 300 else response.status

    async def _send_refresh(
        self, call: SipCall, method: str, interval: int, min_se: int
    ) -> tuple[SipRequest, SipResponse]:
        invite = method == "INVITE"
        request = call.dialog.create_request(
            method,
            transport=call.transport,
            sent_by=self.sent_by(call.transport),
            contact=self.contact(call.transport),  # both are target refresh requests
            headers=[
                ("User-Agent", REFRESH_USER_AGENT),
                ("Allow", ALLOW),
                *offer_headers(interval, min_se, "uac"),  # we refresh, and are this transaction's uac
            ],
            body=call.local_sdp if invite else b"",
            content_type="application/sdp" if invite else None,
        )
        # Only a re-INVITE of ours carries an offer, so only it makes the peer's offers a glare (491).
        call.reinvite_pending = invite
        try:
            sent, response = await self.exchange_authorized(
                request, call.peer_addr, call.transport, call.authenticator
            )
        finally:
            call.reinvite_pending = False
        number, _ = parse_cseq(sent.headers["CSeq"])
        call.dialog.local_seq = max(call.dialog.local_seq, number)  # a challenge took CSeq + 1
        return sent, response

    def _confirm_refresh(
        self, call: SipCall, sent: SipRequest, response: SipResponse, previous: SessionAgreement
    ) -> None:
        with contextlib.suppress(DialogError):
            call.dialog.refresh_target(response)
        call.note_allow(response)
        if sent.method == "INVITE":
            try:
                negotiated = parse_answer(
                    SessionDescription.parse(call.local_sdp), SessionDescription.parse(response.body)
                )
            except (SdpError, NoCommonCodec) as exc:
                log.info("call %s: unusable answer to our refresh (%s); media as it was", call.call_id, exc)
            else:
                self._apply_media(call, negotiated, previous=call.negotiated)
        self._start_session_timer(call, sent, response, previous)
