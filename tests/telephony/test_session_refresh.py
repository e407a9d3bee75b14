"""Session refreshes over real sockets against a raw peer: RFC 3311 UPDATE as a refresh from either side,
UPDATE with an offer, UPDATE in the early dialog of a ringing call, glare waits by Call-ID ownership (RFC
3261 14.1), and the 2xx to our refresh
re-INVITE that arrives after our BYE or after the refresh timed out (RFC 3261 13.2.2.4).

Intervals of 2 s with a 1 s Min-SE, as in test_session_timer.py: a refresh is due 1 s after the answer,
and a session nobody refreshes ends 1.33 s after its last refresh.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from telephony.sdp import SessionDescription
from telephony.sip.message import SipRequest, make_response
from telephony.sip.transaction import TimerConfig
from telephony.sip.ua import UserAgent
from tests.telephony import test_session_timer
from tests.telephony.test_session_timer import StartAgent, answer_refresh, call_in
from tests.telephony.test_ua import OFFER_G729, OFFER_PCMU, RawPeer, reply, request, wait_until

ALLOW_UPDATE = "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"
AGENT_REFRESHES = ("Supported: timer", "Session-Expires: 2;refresher=uas")
CALLER_REFRESHES = ("Supported: timer", "Session-Expires: 2;refresher=uac")


start_agent = test_session_timer.start_agent  # the fixture: a UserAgent (options as given) and a RawPeer


class RecordingRandom(random.Random):
    """A random source that remembers the ranges it was asked to draw from."""

    def __init__(self) -> None:
        super().__init__(4028)
        self.ranges: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.ranges.append((a, b))
        return super().randint(a, b)


def update(
    peer: RawPeer, to_tag: str, cseq: int, *extra: str, body: str = "", content_type: str = "application/sdp"
) -> bytes:
    branch = f"z9hG4bK-u{cseq}"
    return request(
        "UPDATE",
        peer.port,
        branch=branch,
        cseq=cseq,
        to_tag=to_tag,
        body=body,
        content_type=content_type,
        extra=extra,
    )


def answer_update(update_request: SipRequest, status: int = 200, *extra: tuple[str, str]) -> bytes:
    """The peer's answer to our UPDATE: no body (our UPDATE carried no offer)."""
    contact = [("Contact", "<sip:caller@127.0.0.1>")] if status < 300 else []
    return bytes(make_response(update_request, status, extra=[*contact, *extra]))


def agent(ua: UserAgent) -> tuple[str, int]:
    return ("127.0.0.1", ua.port)


def sdp_version(body: bytes) -> int:
    return int(SessionDescription.parse(body).origin.split()[2])  # o=<user> <id> <version> ...


def sdp_direction(body: bytes) -> str:
    description = SessionDescription.parse(body)
    return description.media_direction(description.media[0])


# --- the peer refreshes with UPDATE ---------------------------------------------------------------------
async def test_peer_refreshes_with_update_and_the_media_is_left_alone(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    ok, to_tag = await call_in(ua, peer, calls, *CALLER_REFRESHES)
    assert "UPDATE" in ok.headers.get_all("Allow")
    call = calls[0]
    media, direction, remote = call.media, call.media.direction, call.media.remote

    # Three refreshes 0.8 s apart: 2.4 s in all, well past the 1.33 s an unrefreshed session lasts.
    for cseq in (2, 3, 4):
        await asyncio.sleep(0.8)
        peer.send(update(peer, to_tag, cseq, *CALLER_REFRESHES), agent(ua))
        answered = await peer.response(200)
        assert answered.headers["CSeq"] == f"{cseq} UPDATE"
        assert answered.headers["Session-Expires"] == "2;refresher=uac"
        assert answered.headers.get_all("Require") == ["timer"]
        assert "UPDATE" in answered.headers.get_all("Allow") and "Contact" in answered.headers
        assert answered.body == b"" and "Content-Type" not in answered.headers
        assert call.state == "confirmed"
    assert call.media is media and call.media.direction == direction and call.media.remote == remote
    assert ua.session_agreement(call) is not None

    # The refreshes stop: the agent ends the session 2 - 2/3 s after the last one, no ACK ever expected.
    bye = await peer.request("BYE", timeout=3)
    assert bye.headers["Reason"] == 'SIP;cause=408;text="Session expired"'
    peer.send(reply(bye, 200), agent(ua))
    await asyncio.wait_for(call.ended.wait(), 2)
    assert call.end_reason == "session-expired"


async def test_update_refresh_leaves_the_rtp_timeout_count_running(start_agent: StartAgent) -> None:
    # The caller sends no RTP (its media port is 9, discard). An UPDATE that touched the stream would start
    # the 1.5 s RTP-timeout count again, so the BYE could not come sooner than 1.5 s after the UPDATE.
    ua, peer, calls = await start_agent(session_expires=60, min_se=1, rtp_timeout_s=1.5)
    _, to_tag = await call_in(ua, peer, calls, *CALLER_REFRESHES)
    await asyncio.sleep(0.7)
    peer.send(update(peer, to_tag, 2, *CALLER_REFRESHES), agent(ua))
    await peer.response(200)
    refreshed_at = time.monotonic()
    bye = await peer.request("BYE", timeout=3)
    quiet_after_update = time.monotonic() - refreshed_at
    assert bye.headers["Reason"] == 'SIP;cause=408;text="RTP timeout"'
    assert quiet_after_update < 1.5, (
        f"the UPDATE restarted the RTP-timeout count ({quiet_after_update:.2f} s)"
    )
    peer.send(reply(bye, 200), agent(ua))


async def test_update_with_an_offer_is_answered_like_a_reinvite(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    ok, to_tag = await call_in(ua, peer, calls, *CALLER_REFRESHES)
    call = calls[0]
    first_version = sdp_version(ok.body)

    # Hold: the caller offers sendonly in an UPDATE; the answer is in the 200 (RFC 3311 5.2), recvonly.
    hold = OFFER_PCMU.format(port=9) + "a=sendonly\r\n"
    peer.send(update(peer, to_tag, 2, *CALLER_REFRESHES, body=hold), agent(ua))
    held = await peer.response(200)
    assert held.headers["Content-Type"] == "application/sdp"
    assert held.headers["Session-Expires"] == "2;refresher=uac"
    assert sdp_direction(held.body) == "recvonly" and call.media.direction == "recvonly"
    assert sdp_version(held.body) == first_version + 1  # a changed description (RFC 3264 8)

    # A codec other than the one in use is refused, and the call goes on as it was.
    peer.send(update(peer, to_tag, 3, body=OFFER_G729.format(port=9)), agent(ua))
    await peer.response(488)
    assert call.media.direction == "recvonly" and call.state == "confirmed"

    # Not SDP: refused, with what we would take.
    peer.send(update(peer, to_tag, 4, body="hello", content_type="text/plain"), agent(ua))
    assert (await peer.response(415)).headers["Accept"] == "application/sdp"

    # Resume, to a new port.
    peer.send(update(peer, to_tag, 5, body=OFFER_PCMU.format(port=4002)), agent(ua))
    resumed = await peer.response(200)
    assert sdp_direction(resumed.body) == "sendrecv" and call.media.direction == "sendrecv"
    assert call.media.remote == ("127.0.0.1", 4002)


async def test_update_offer_during_our_refresh_reinvite_gets_491_a_plain_one_200(
    start_agent: StartAgent,
) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    _, to_tag = await call_in(ua, peer, calls, *AGENT_REFRESHES)  # no Allow: we refresh with re-INVITE
    refresh = await peer.request("INVITE", timeout=3)

    peer.send(update(peer, to_tag, 2, body=OFFER_PCMU.format(port=9)), agent(ua))
    assert (await peer.response(491)).headers["CSeq"] == "2 UPDATE"  # RFC 3311 5.2: our offer is pending
    peer.send(update(peer, to_tag, 3, *CALLER_REFRESHES), agent(ua))
    assert (await peer.response(200)).headers["CSeq"] == "3 UPDATE"  # no offer, no glare

    peer.send(answer_refresh(refresh, ("Session-Expires", "2;refresher=uac")), agent(ua))
    ack = await peer.request("ACK")
    assert ack.headers["CSeq"] == refresh.headers["CSeq"].replace("INVITE", "ACK")
    assert calls[0].state == "confirmed"


async def test_update_outside_a_dialog_gets_481(start_agent: StartAgent) -> None:
    ua, peer, _ = await start_agent(session_expires=60, min_se=1)
    peer.send(request("UPDATE", peer.port, extra=CALLER_REFRESHES), agent(ua))
    assert (await peer.response()).status == 481
    peer.send(request("UPDATE", peer.port, branch="z9hG4bK-u2", to_tag="nobody"), agent(ua))
    assert (await peer.response()).status == 481
    peer.send(request("OPTIONS", peer.port, branch="z9hG4bK-o"), agent(ua))
    assert "UPDATE" in (await peer.response(200)).headers.get_all("Allow")


# --- UPDATE in the early dialog (RFC 3311 5.1, 5.2) ------------------------------------------------------
@pytest.mark.parametrize("invite_offer", [True, False], ids=["early-offer", "late-offer"])
async def test_update_in_the_early_dialog_while_the_call_rings(
    start_agent: StartAgent, invite_offer: bool
) -> None:
    rng = RecordingRandom()
    ua, peer, calls = await start_agent(session_expires=60, min_se=1, ring_ms=1000, rng=rng)
    invite_body = OFFER_PCMU.format(port=9) if invite_offer else ""
    peer.send(request("INVITE", peer.port, body=invite_body, extra=CALLER_REFRESHES), agent(ua))
    ringing = await peer.response(180)
    to_tag = ringing.headers["To"].split("tag=")[1]  # the 180 made the early dialog (RFC 3261 12.1.1)

    # No body: nothing to negotiate, and it moves the target (a target refresh request, RFC 3311 5.2).
    moved = update(peer, to_tag, 2, *CALLER_REFRESHES).replace(
        b"Contact: <sip:caller@", b"Contact: <sip:moved@"
    )
    peer.send(moved, agent(ua))
    answered = await peer.response()
    assert (answered.status, answered.headers["CSeq"]) == (200, "2 UPDATE")
    assert answered.headers["To"] == ringing.headers["To"]
    assert answered.body == b"" and "Content-Type" not in answered.headers
    assert "Contact" in answered.headers and "UPDATE" in answered.headers.get_all("Allow")
    assert "Session-Expires" not in answered.headers  # no session to refresh yet: the INVITE's 2xx sets it

    # An offer: the INVITE's offer/answer is not complete while it rings (no SDP in the 180, no 100rel),
    # so RFC 3311 5.2 has it refused with 500 and a Retry-After of 0 to 10 s.
    peer.send(update(peer, to_tag, 3, body=OFFER_PCMU.format(port=4008)), agent(ua))
    refused = await peer.response()
    assert (refused.status, refused.headers["CSeq"]) == (500, "3 UPDATE")
    assert 0 <= int(refused.headers["Retry-After"]) <= 10 and rng.ranges == [(0, 10)]
    # Not SDP: 415, as in a confirmed dialog. An old CSeq: 500 without Retry-After (RFC 3261 12.2.2).
    peer.send(update(peer, to_tag, 4, body="hello", content_type="text/plain"), agent(ua))
    assert (await peer.response()).status == 415
    stale = request("UPDATE", peer.port, branch="z9hG4bK-stale", cseq=3, to_tag=to_tag)
    peer.send(stale, agent(ua))
    out_of_order = await peer.response()
    assert out_of_order.status == 500 and "Retry-After" not in out_of_order.headers

    # The call is then answered as always, in the same dialog, with the session timer, and the target
    # the UPDATE set.
    ok = await peer.response(200)
    assert ok.headers["CSeq"] == "1 INVITE" and ok.headers["To"] == ringing.headers["To"]
    assert ok.headers["Session-Expires"] == "2;refresher=uac"
    ack_body = "" if invite_offer else OFFER_PCMU.format(port=9)
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag, body=ack_body), agent(ua))
    await wait_until(lambda: bool(calls))
    call = calls[0]
    assert call.remote_target == f"sip:moved@127.0.0.1:{peer.port}"
    assert call.state == "confirmed" and call.media.remote == ("127.0.0.1", 9)  # the refused offer: unused
    assert ua.session_agreement(call) is not None
    # Confirmed now, the offer the caller was told to retry is answered in the UPDATE's 200.
    peer.send(update(peer, to_tag, 5, body=OFFER_PCMU.format(port=4008)), agent(ua))
    retried = await peer.response()
    assert retried.status == 200 and sdp_direction(retried.body) == "sendrecv"
    assert call.media.remote == ("127.0.0.1", 4008)


async def test_reinvite_in_the_early_dialog_gets_500_with_retry_after(start_agent: StartAgent) -> None:
    # RFC 3261 14.2: a second INVITE on the dialog before our final response to the first (lower CSeq) MUST
    # get 500 with a random Retry-After of 0 to 10 s. The ringing INVITE is answered as always afterwards.
    rng = RecordingRandom()
    ua, peer, calls = await start_agent(ring_ms=1000, rng=rng)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), agent(ua))
    ringing = await peer.response(180)
    to_tag = ringing.headers["To"].split("tag=")[1]
    reinvite = request(
        "INVITE", peer.port, branch="z9hG4bK-re", cseq=2, to_tag=to_tag, body=OFFER_PCMU.format(port=4008)
    )
    peer.send(reinvite, agent(ua))
    refused = await peer.response()
    assert (refused.status, refused.headers["CSeq"]) == (500, "2 INVITE")
    assert refused.headers["To"] == ringing.headers["To"]
    assert 0 <= int(refused.headers["Retry-After"]) <= 10 and rng.ranges == [(0, 10)]
    peer.send(request("ACK", peer.port, branch="z9hG4bK-re", cseq=2, to_tag=to_tag), agent(ua))
    ok = await peer.response(200)
    assert ok.headers["CSeq"] == "1 INVITE" and ok.headers["To"] == ringing.headers["To"]
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag), agent(ua))
    await wait_until(lambda: bool(calls))
    assert calls[0].media.remote == ("127.0.0.1", 9)  # the refused re-INVITE's offer was not applied
    # The retry, now that the dialog is confirmed, is an ordinary re-INVITE.
    retry = request(
        "INVITE", peer.port, branch="z9hG4bK-re2", cseq=3, to_tag=to_tag, body=OFFER_PCMU.format(port=4008)
    )
    peer.send(retry, agent(ua))
    assert (await peer.response(200)).headers["CSeq"] == "3 INVITE"
    assert calls[0].media.remote == ("127.0.0.1", 4008)


async def test_other_requests_in_the_early_dialog_and_update_after_it_ended_get_481(
    start_agent: StartAgent,
) -> None:
    ua, peer, _ = await start_agent(ring_ms=3000)
    peer.send(request("INVITE", peer.port, body=OFFER_PCMU.format(port=9)), agent(ua))
    to_tag = (await peer.response(180)).headers["To"].split("tag=")[1]
    peer.send(request("INFO", peer.port, branch="z9hG4bK-i", cseq=2, to_tag=to_tag), agent(ua))
    assert (await peer.response()).status == 481  # only UPDATE, BYE and INVITE are served before the answer
    peer.send(request("CANCEL", peer.port), agent(ua))
    assert (await peer.response(487)).headers["CSeq"] == "1 INVITE"
    # The CANCEL ended the early dialog: an UPDATE in it now finds nothing.
    peer.send(update(peer, to_tag, 3), agent(ua))
    assert (await peer.response()).status == 481


# --- we refresh with UPDATE -------------------------------------------------------------------------------
async def test_we_refresh_with_update_when_the_caller_allows_it(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    await call_in(ua, peer, calls, *AGENT_REFRESHES, ALLOW_UPDATE)
    call = calls[0]
    media = call.media
    sent: list[SipRequest] = []
    for _ in range(2):
        message = await peer.receive(timeout=3)
        # Not an ACK, not a BYE: the 200 to the first UPDATE restarted the session clock.
        assert isinstance(message, SipRequest) and message.method == "UPDATE", message
        sent.append(message)
        assert message.body == b"" and "Content-Type" not in message.headers  # RFC 4028 7.4: no offer
        assert message.headers["Session-Expires"] == "2;refresher=uac"
        assert "timer" in message.headers.get_all("Supported") and message.headers["Min-SE"] == "1"
        assert "Contact" in message.headers and "UPDATE" in message.headers.get_all("Allow")
        peer.send(
            answer_update(message, 200, ("Session-Expires", "2;refresher=uac"), ("Require", "timer")),
            agent(ua),
        )
    assert sent[0].headers["CSeq"] != sent[1].headers["CSeq"]
    assert call.state == "confirmed" and call.media is media and call.media.direction == "sendrecv"


async def test_our_update_refused_as_unknown_falls_back_to_reinvite(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    ok, _ = await call_in(ua, peer, calls, *AGENT_REFRESHES, ALLOW_UPDATE)
    first = await peer.request("UPDATE", timeout=3)
    peer.send(answer_update(first, 405, ("Allow", "INVITE, ACK, BYE")), agent(ua))
    refresh = await peer.request("INVITE", timeout=1)  # at once, not a refresh interval later
    assert refresh.body == ok.body
    peer.send(answer_refresh(refresh, ("Session-Expires", "2;refresher=uac")), agent(ua))
    await peer.request("ACK")
    # And from then on: the peer does not take UPDATE.
    again = await peer.request("INVITE", timeout=3)
    assert again.headers["CSeq"] != refresh.headers["CSeq"]


@pytest.mark.parametrize("status", [481, 408])
async def test_our_update_answered_481_or_408_ends_the_call(start_agent: StartAgent, status: int) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    await call_in(ua, peer, calls, *AGENT_REFRESHES, ALLOW_UPDATE)
    refresh = await peer.request("UPDATE", timeout=3)
    peer.send(answer_update(refresh, status), agent(ua))
    bye = await peer.request("BYE")
    peer.send(reply(bye, 200), agent(ua))
    await asyncio.wait_for(calls[0].ended.wait(), 2)
    assert calls[0].hangup_by == "agent" and calls[0].end_reason == "session-refresh-failed"


# --- 491: who waits how long (RFC 3261 14.1) ------------------------------------------------------------
@pytest.mark.parametrize(("method", "headers"), [("INVITE", ()), ("UPDATE", (ALLOW_UPDATE,))])
async def test_491_on_a_call_the_peer_placed_waits_0_to_2_s(
    start_agent: StartAgent, method: str, headers: tuple[str, ...]
) -> None:
    rng = RecordingRandom()
    ua, peer, calls = await start_agent(session_expires=60, min_se=1, rng=rng)
    await call_in(ua, peer, calls, *AGENT_REFRESHES, *headers)
    refresh = await peer.request(method, timeout=3)
    peer.send(reply(refresh, 491, "Request Pending"), agent(ua))
    # The caller generated the Call-ID: we draw 0-2 s in 10 ms units. (With a 2 s interval no time is left
    # for the retry itself, so the session then expires: the BYE says the wait was computed and passed.)
    bye = await peer.request("BYE", timeout=3)
    peer.send(reply(bye, 200), agent(ua))
    assert rng.ranges == [(0, 200)]
    assert calls[0].end_reason == "session-expired"


async def test_491_on_a_call_we_placed_waits_2_1_to_4_s(start_agent: StartAgent) -> None:
    rng = RecordingRandom()
    ua, peer, _ = await start_agent(session_expires=60, min_se=1, rng=rng)
    placing = asyncio.create_task(ua.invite(f"sip:+15550100009@127.0.0.1:{peer.port}"))
    invite = await peer.request("INVITE")
    assert "UPDATE" in invite.headers.get_all("Allow")  # RFC 3311: the callee learns it may UPDATE us
    peer.send(
        bytes(
            make_response(
                invite,
                200,
                to_tag="callee",
                body=OFFER_PCMU.format(port=9).encode(),
                content_type="application/sdp",
                extra=[
                    ("Contact", f"<sip:callee@127.0.0.1:{peer.port}>"),
                    ("Require", "timer"),
                    ("Session-Expires", "2;refresher=uac"),
                ],
            )
        ),
        agent(ua),
    )
    await peer.request("ACK")
    call = await asyncio.wait_for(placing, 2)
    assert call.owns_call_id
    refresh = await peer.request("INVITE", timeout=3)  # the callee sent no Allow: re-INVITE
    peer.send(reply(refresh, 491, "Request Pending"), agent(ua))
    bye = await peer.request("BYE", timeout=3)
    peer.send(reply(bye, 200), agent(ua))
    assert rng.ranges == [(210, 400)]


# --- a 2xx after our BYE (RFC 3261 13.2.2.4) ------------------------------------------------------------
async def test_2xx_to_our_refresh_after_our_bye_is_acked_and_the_call_stays_ended(
    start_agent: StartAgent,
) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    await call_in(ua, peer, calls, *AGENT_REFRESHES)
    call = calls[0]
    refresh = await peer.request("INVITE", timeout=3)
    hanging_up = asyncio.create_task(call.hangup())  # the agent hangs up while the refresh is pending
    bye = await peer.request("BYE")
    assert call.state == "terminated"

    # The peer's 200 to the refresh crossed our BYE; its answer moves the media, which must not happen now.
    late = make_response(
        refresh,
        200,
        body=OFFER_PCMU.format(port=4004).encode(),
        content_type="application/sdp",
        extra=[("Contact", "<sip:caller@127.0.0.1>"), ("Session-Expires", "2;refresher=uac")],
    )
    peer.send(bytes(late), agent(ua))
    ack = await peer.request("ACK")
    assert ack.headers["CSeq"] == refresh.headers["CSeq"].replace("INVITE", "ACK")
    assert ack.headers["Call-ID"] == refresh.headers["Call-ID"] and ack.body == b""
    peer.send(reply(bye, 200), agent(ua))
    await asyncio.wait_for(hanging_up, 2)

    # Our ACK was lost: the peer retransmits its 200, and gets the same ACK again.
    peer.send(bytes(late), agent(ua))
    again = await peer.request("ACK")
    assert again.headers["CSeq"] == ack.headers["CSeq"] and again.headers["Via"] == ack.headers["Via"]

    assert call.state == "terminated" and call.end_reason == "bye" and ua.calls == {}
    assert call.negotiated.remote_port == 9  # the late answer was not applied
    assert ua.session_agreement(call) is None
    await peer.expect_silence(1.2)  # no refresh, no BYE any more: a refresh would be due 1 s on


async def test_2xx_to_our_refresh_after_it_timed_out_is_acked_and_nothing_else(
    start_agent: StartAgent,
) -> None:
    # T1 = 20 ms: the refresh re-INVITE times out (Timer B) 1.28 s after it is sent.
    timers = TimerConfig(t1=0.02, t2=0.08, t4=0.05)
    ua, peer, calls = await start_agent(session_expires=60, min_se=1, timers=timers)
    await call_in(ua, peer, calls, *AGENT_REFRESHES)
    call = calls[0]
    refresh = await peer.request("INVITE", timeout=3)
    # Unanswered, the refresh cannot keep the session: the agent ends it with BYE (RFC 4028 10).
    bye = await peer.request("BYE", timeout=3)
    peer.send(reply(bye, 200), agent(ua))
    await wait_until(lambda: ua.open_transactions == 0, timeout=4)  # the refresh's transaction too
    assert call.state == "terminated"
    peer.drain()  # the refresh's retransmissions

    # Its 200 comes only now. It is ACKed (13.2.2.4), where the re-INVITE went and with its CSeq ...
    late = make_response(
        refresh,
        200,
        body=OFFER_PCMU.format(port=4006).encode(),
        content_type="application/sdp",
        extra=[("Contact", "<sip:caller@127.0.0.1>"), ("Session-Expires", "2;refresher=uac")],
    )
    peer.send(bytes(late), agent(ua))
    ack = await peer.request("ACK")
    assert ack.headers["CSeq"] == refresh.headers["CSeq"].replace("INVITE", "ACK")
    assert ack.uri == refresh.uri and ack.headers["To"] == refresh.headers["To"]
    assert ack.headers["Call-ID"] == refresh.headers["Call-ID"] and ack.body == b""
    # ... and again when it comes again; the call, already ended by its BYE, gets no second one.
    peer.send(bytes(late), agent(ua))
    again = await peer.request("ACK")
    assert again.headers["Via"] == ack.headers["Via"]
    await peer.expect_silence(0.5)
    assert call.negotiated.remote_port == 9 and ua.calls == {}  # the late answer was not applied
