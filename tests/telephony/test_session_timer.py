"""RFC 4028 session timers: header values, the UAS and UAC negotiation and the per-dialog clock (sans-IO,
driven by a fake time source), then the user agent's refreshes over real sockets against a raw peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from telephony.media import MediaClock, RtpPortPool
from telephony.sip.call import SipCall, allowed_methods
from telephony.sip.dialog import DialogId, glare_retry_delay
from telephony.sip.errors import SipParseError
from telephony.sip.message import SipRequest, SipResponse, make_response, parse_message
from telephony.sip.session_timer import (
    REFRESH_RETRY_MARGIN_S,
    IntervalTooSmall,
    RefreshDue,
    SessionAgreement,
    SessionExpired,
    SessionExpires,
    SessionTimerConfig,
    SessionTimers,
    after_refused_refresh,
    expiry_margin,
    negotiate_as_uas,
    offer_headers,
    parse_min_se,
    read_answer,
    refresh_retry_at,
    response_headers,
)
from telephony.sip.ua import UserAgent
from tests.telephony.test_ua import OFFER_PCMU, RawPeer, reply, request

CONFIG = SessionTimerConfig(interval=1800, min_se=90)
DIALOG = DialogId("call-1@test", "ours", "theirs")
OTHER = DialogId("call-2@test", "ours", "theirs")


def invite(*headers: str, method: str = "INVITE", cseq: int = 1) -> SipRequest:
    lines = [
        f"{method} sip:agent@127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-st",
        "Max-Forwards: 70",
        "From: <sip:+15550100002@127.0.0.1>;tag=caller",
        "To: <sip:agent@127.0.0.1>",
        "Call-ID: call-1@test",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:caller@127.0.0.1:5070>",
        *headers,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, SipRequest)
    return message


def ok(*headers: str) -> SipResponse:
    lines = [
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours",
        "From: <sip:agent@127.0.0.1>;tag=ours",
        "To: <sip:+15550100009@127.0.0.1>;tag=theirs",
        "Call-ID: call-1@test",
        "CSeq: 7 INVITE",
        *headers,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, SipResponse)
    return message


# --- header values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1800", SessionExpires(1800)),
        ("90;refresher=uac", SessionExpires(90, "uac")),
        ("4000 ; REFRESHER = UAS", SessionExpires(4000, "uas")),
        ("600;foo=bar;refresher=uas", SessionExpires(600, "uas")),
    ],
)
def test_session_expires_values_parse(value: str, expected: SessionExpires) -> None:
    assert SessionExpires.parse(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "-5", "0", "90;refresher=proxy", "99999999999"])
def test_bad_session_expires_is_a_400(value: str) -> None:
    with pytest.raises(SipParseError) as error:
        SessionExpires.parse(value)
    assert error.value.status == 400


def test_session_expires_prints_back() -> None:
    assert str(SessionExpires(1800)) == "1800"
    assert str(SessionExpires(90, "uac")) == "90;refresher=uac"
    assert SessionExpires.parse(str(SessionExpires(120, "uas"))) == SessionExpires(120, "uas")


def test_min_se_values() -> None:
    assert parse_min_se("90") == 90
    assert parse_min_se(" 120;x=1") == 120
    with pytest.raises(SipParseError):
        parse_min_se("soon")


def test_config_rejects_an_interval_below_its_minimum() -> None:
    with pytest.raises(ValueError):
        SessionTimerConfig(interval=60, min_se=90)
    with pytest.raises(ValueError):
        SessionTimerConfig(interval=10, min_se=0)


# --- the UAS negotiation (section 9) -------------------------------------------------------------------
def test_interval_below_our_minimum_gets_422_with_our_min_se() -> None:
    outcome = negotiate_as_uas(invite("Supported: timer", "Session-Expires: 60"), CONFIG)
    assert outcome == IntervalTooSmall(90)
    assert outcome.headers == [("Min-SE", "90")]


def test_422_names_the_larger_of_ours_and_the_requests_min_se() -> None:
    # The request's own Min-SE is above ours and its Session-Expires below both (a broken UAC).
    outcome = negotiate_as_uas(invite("k: timer", "x: 30", "Min-SE: 120"), SessionTimerConfig(1800, 60))
    assert outcome == IntervalTooSmall(120)


def test_compact_form_is_read() -> None:
    # k = Supported, x = Session-Expires (RFC 3261 7.3.3, RFC 4028 4).
    outcome = negotiate_as_uas(invite("k: timer", "x: 600;refresher=uac"), CONFIG)
    assert outcome == SessionAgreement(600, we_refresh=False, peer_supports=True, min_se=90)


def test_uac_that_cannot_read_a_422_gets_the_interval_raised() -> None:
    # No Supported: timer, but a Session-Expires a proxy inserted: refusing would only fail the call.
    outcome = negotiate_as_uas(invite("Session-Expires: 30"), CONFIG)
    assert outcome == SessionAgreement(90, we_refresh=True, peer_supports=False, min_se=90)


def test_a_longer_interval_is_lowered_to_ours_but_never_raised() -> None:
    lowered = negotiate_as_uas(invite("Supported: timer", "Session-Expires: 7200"), CONFIG)
    assert isinstance(lowered, SessionAgreement) and lowered.interval == 1800
    kept = negotiate_as_uas(invite("Supported: timer", "Session-Expires: 300"), CONFIG)
    assert isinstance(kept, SessionAgreement) and kept.interval == 300


def test_never_lowered_below_the_requests_min_se() -> None:
    outcome = negotiate_as_uas(invite("Supported: timer", "Session-Expires: 7200", "Min-SE: 3600"), CONFIG)
    assert isinstance(outcome, SessionAgreement)
    assert outcome.interval == 3600
    assert outcome.min_se == 3600  # and our own refreshes then carry it (section 7.4)


@pytest.mark.parametrize(
    ("headers", "we_refresh", "require"),
    [
        # UAC supports the extension and names the refresher: it is copied.
        (("Supported: timer", "Session-Expires: 600;refresher=uac"), False, True),
        (("Supported: timer", "Session-Expires: 600;refresher=uas"), True, True),
        # Supports it and leaves the choice to us: the UAC refreshes.
        (("Supported: timer", "Session-Expires: 600"), False, True),
        (("Supported: 100rel, timer",), False, True),
        (("Require: timer", "Session-Expires: 600"), False, True),
        # Does not support it: only we can refresh, and no Require it would not understand.
        (("Session-Expires: 600;refresher=uac",), True, False),
        ((), True, False),
    ],
)
def test_refresher_and_require(headers: tuple[str, ...], we_refresh: bool, require: bool) -> None:
    outcome = negotiate_as_uas(invite(*headers), CONFIG)
    assert isinstance(outcome, SessionAgreement)
    assert outcome.we_refresh is we_refresh
    written = dict(response_headers(outcome))
    refresher = SessionExpires.parse(written["Session-Expires"]).refresher
    assert refresher == ("uas" if we_refresh else "uac")  # always named in our 2xx
    assert ("Require" in written) is require
    if require:
        assert written["Require"] == "timer"


def test_an_update_is_read_like_a_reinvite() -> None:
    # RFC 4028 9: UPDATE and re-INVITE are both session refreshes, negotiated the same way.
    for method in ("INVITE", "UPDATE"):
        refresh = invite("Supported: timer", "Session-Expires: 600;refresher=uac", method=method, cseq=2)
        assert negotiate_as_uas(refresh, CONFIG) == SessionAgreement(600, False, True, 90)
        too_small = invite("Supported: timer", "Session-Expires: 60", method=method, cseq=3)
        assert negotiate_as_uas(too_small, CONFIG) == IntervalTooSmall(90)


def test_allow_lists_are_read_item_by_item() -> None:
    allowed = allowed_methods(invite("Allow: INVITE, ACK,BYE", "Allow: update"))
    assert allowed == frozenset({"INVITE", "ACK", "BYE", "UPDATE"})
    assert allowed_methods(invite()) is None  # no Allow: unknown, not "nothing"


def test_no_session_expires_asked_gets_ours() -> None:
    outcome = negotiate_as_uas(invite("Supported: timer"), SessionTimerConfig(interval=900, min_se=90))
    assert isinstance(outcome, SessionAgreement) and outcome.interval == 900


def test_malformed_headers_are_parse_errors() -> None:
    with pytest.raises(SipParseError):
        negotiate_as_uas(invite("Supported: timer", "Session-Expires: soon"), CONFIG)
    with pytest.raises(SipParseError):
        negotiate_as_uas(invite("Supported: timer", "Min-SE: -1"), CONFIG)


# --- the UAC side (section 7) --------------------------------------------------------------------------
def test_offer_headers() -> None:
    assert offer_headers(1800, 90) == [
        ("Supported", "timer"),
        ("Session-Expires", "1800"),
        ("Min-SE", "90"),
    ]
    assert dict(offer_headers(120, 120, "uac"))["Session-Expires"] == "120;refresher=uac"


def test_answer_naming_us_as_refresher() -> None:
    agreement = read_answer(ok("Require: timer", "Session-Expires: 300;refresher=uac"), min_se=90)
    assert agreement == SessionAgreement(300, we_refresh=True, peer_supports=True, min_se=90)


def test_answer_naming_the_uas_as_refresher() -> None:
    agreement = read_answer(ok("Require: timer", "x: 300;refresher=uas"), min_se=90)
    assert agreement is not None and not agreement.we_refresh


def test_answer_without_refresher_leaves_it_to_us() -> None:
    agreement = read_answer(ok("Session-Expires: 300"), min_se=90)
    assert agreement is not None and agreement.we_refresh


def test_answer_without_session_expires_switches_the_timer_off() -> None:
    assert read_answer(ok(), min_se=90) is None
    previous = SessionAgreement(300, we_refresh=True, peer_supports=True, min_se=90)
    assert read_answer(ok(), min_se=90, previous=previous) is None  # section 7.2: turned off mid-dialog


def test_peer_without_the_extension_keeps_our_own_timer() -> None:
    # We refresh a caller that never supported the extension: its 2xx never carries Session-Expires.
    previous = SessionAgreement(1800, we_refresh=True, peer_supports=False, min_se=90)
    assert read_answer(ok(), min_se=90, previous=previous) == previous


# --- the clock (section 10) ------------------------------------------------------------------------------
def run_until(timers: SessionTimers, until: float, step: float = 0.25) -> list[tuple[float, object]]:
    """Tick a fake clock forward like the UA's timer would; returns (time, event) pairs."""
    seen: list[tuple[float, object]] = []
    now = 0.0
    while now <= until:
        seen.extend((now, event) for event in timers.tick(now))
        now += step
    return seen


@pytest.mark.parametrize(("interval", "margin"), [(1800, 32.0), (90, 30.0), (3, 1.0)])
def test_expiry_margin_is_min_of_32_and_a_third(interval: int, margin: float) -> None:
    assert expiry_margin(interval) == margin


def test_refresher_refreshes_at_half_the_interval() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(90, True, True, 90), now=0.0)
    assert timers.next_timer() == 45.0
    assert timers.tick(44.9) == []
    assert timers.tick(45.0) == [RefreshDue(DIALOG)]
    # The refresh is under way: nothing more until the session would expire.
    assert timers.next_timer() == 60.0
    assert timers.tick(59.9) == []


def test_refresh_restarts_the_clock() -> None:
    timers = SessionTimers()
    agreement = SessionAgreement(90, True, True, 90)
    timers.start(DIALOG, agreement, now=0.0)
    assert timers.tick(45.0) == [RefreshDue(DIALOG)]
    timers.start(DIALOG, agreement, now=45.5)  # the 2xx to our refresh
    assert timers.tick(60.0) == []  # the old expiry is gone
    assert timers.next_timer() == 90.5
    assert timers.tick(90.5) == [RefreshDue(DIALOG)]


def test_our_refresh_that_never_succeeds_expires_the_session() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(90, True, True, 90), now=0.0)
    events = run_until(timers, 100.0)
    assert events == [(45.0, RefreshDue(DIALOG)), (60.0, SessionExpired(DIALOG))]
    assert len(timers) == 0 and timers.next_timer() is None


def test_non_refresher_ends_the_session_before_it_expires() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(1800, False, True, 90), now=10.0)
    assert timers.next_timer() == 10.0 + 1800 - 32
    assert timers.tick(1777.9) == []
    assert timers.tick(1778.0) == [SessionExpired(DIALOG)]
    assert timers.tick(5000.0) == []  # once only


def test_peer_refreshes_keep_the_session_up() -> None:
    timers = SessionTimers()
    agreement = SessionAgreement(3, False, True, 2)
    events: list[tuple[float, object]] = []
    now = 0.0
    timers.start(DIALOG, agreement, now)
    while now < 10.0:  # the peer refreshes every 1.5 s: half of 3, as section 10 says it should
        now += 0.25
        events.extend((now, event) for event in timers.tick(now))
        if now % 1.5 == 0:
            timers.start(DIALOG, agreement, now)
    assert events == []
    # Then the refreshes stop: BYE time is 3 - min(32, 1) = 2 s after the last one.
    last = now - now % 1.5
    assert timers.next_timer() == last + 2.0


def test_refresh_later_only_while_the_session_lasts() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(90, True, True, 90), now=0.0)
    assert timers.tick(45.0) == [RefreshDue(DIALOG)]
    assert timers.refresh_later(DIALOG, 48.0)  # 491: try again
    assert timers.tick(48.0) == [RefreshDue(DIALOG)]
    assert not timers.refresh_later(DIALOG, 61.0)  # after the expiry at 60: too late
    assert timers.tick(60.0) == [SessionExpired(DIALOG)]
    assert not timers.refresh_later(DIALOG, 61.0)  # gone


@pytest.mark.parametrize(
    ("status", "method", "verdict"),
    [
        (481, "INVITE", "end"),
        (408, "UPDATE", "end"),
        (503, "INVITE", "end"),
        (491, "INVITE", "glare"),
        (491, "UPDATE", "glare"),
        (405, "UPDATE", "reinvite"),
        (501, "UPDATE", "reinvite"),
        (405, "INVITE", "later"),  # a re-INVITE has nothing to fall back to
        (488, "INVITE", "later"),
        (500, "UPDATE", "later"),
    ],
)
def test_what_a_refused_refresh_leads_to(status: int, method: str, verdict: str) -> None:
    assert after_refused_refresh(status, method) == verdict


def test_491_is_retried_after_the_glare_wait_others_halfway() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(90, True, True, 90), now=0.0)
    assert timers.tick(45.0) == [RefreshDue(DIALOG)]
    expires_at = timers.expires_at(DIALOG)
    assert expires_at == 60.0
    # Our refresh got 491 at 45.2: on a call the peer placed the wait is 0-2 s; say the draw was 1.37 s.
    wait = glare_retry_delay(False, lambda low, high: 137)
    at = refresh_retry_at(45.2, expires_at, wait)
    assert at is not None and round(at, 6) == 46.57
    assert timers.refresh_later(DIALOG, at)
    assert timers.tick(46.56) == []
    assert timers.tick(at) == [RefreshDue(DIALOG)]
    # Any other refusal: halfway to the expiry, while that leaves the margin.
    assert refresh_retry_at(47.0, expires_at, None) == 53.5
    latest = expires_at - 2 * REFRESH_RETRY_MARGIN_S
    assert refresh_retry_at(latest, expires_at, None) == expires_at - REFRESH_RETRY_MARGIN_S
    # Too close to the expiry: no retry, the session expires.
    assert refresh_retry_at(latest + 0.1, expires_at, None) is None
    assert refresh_retry_at(55.0, expires_at, 3.5) is None
    assert run_until(timers, 100.0) == [(60.0, SessionExpired(DIALOG))]


def test_refresh_later_is_not_for_the_non_refresher() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(90, False, True, 90), now=0.0)
    assert not timers.refresh_later(DIALOG, 10.0)
    assert timers.next_timer() == 60.0


def test_stopped_sessions_fire_nothing_and_others_go_on() -> None:
    timers = SessionTimers()
    timers.start(DIALOG, SessionAgreement(90, False, True, 90), now=0.0)
    timers.start(OTHER, SessionAgreement(120, True, True, 90), now=1.0)
    timers.stop(DIALOG)
    assert timers.agreement(DIALOG) is None
    assert timers.next_timer() == 61.0
    # OTHER refreshes at 1 + 120 / 2; with no 2xx to that, it expires at 1 + 120 - 32.
    assert run_until(timers, 200.0) == [(61.0, RefreshDue(OTHER)), (89.0, SessionExpired(OTHER))]


# --- the user agent over real sockets, with a raw peer -------------------------------------------------
# Intervals of 2 s with a 1 s Min-SE: a refresh is due after 1 s, an unrefreshed session ends after 1.33 s.
# RTP ports 39000-39499: the other suites use 36000-38999 and 41000-41999.
AgentAndPeer = tuple[UserAgent, RawPeer, list[SipCall]]
StartAgent = Callable[..., Awaitable[AgentAndPeer]]


@pytest.fixture
async def start_agent() -> AsyncIterator[StartAgent]:
    opened: list[tuple[UserAgent, RawPeer]] = []

    async def start(**options: Any) -> AgentAndPeer:
        calls: list[SipCall] = []

        async def on_call(call: SipCall) -> None:
            calls.append(call)
            await call.ended.wait()

        ua = UserAgent(
            advertised_host="127.0.0.1",
            port_pool=RtpPortPool(39000, 39499),
            clock=MediaClock(),
            on_call=on_call,
            **options,
        )
        await ua.start("127.0.0.1", 0)
        _, peer = await asyncio.get_running_loop().create_datagram_endpoint(
            RawPeer, local_addr=("127.0.0.1", 0)
        )
        opened.append((ua, peer))
        return ua, peer, calls

    yield start
    for ua, peer in opened:
        await ua.close(grace_s=0.05)
        if peer.transport is not None:
            peer.transport.close()


async def call_in(
    ua: UserAgent, peer: RawPeer, calls: list[SipCall], *headers: str
) -> tuple[SipResponse, str]:
    """INVITE (with `headers`), 200, ACK: the 200 and the agent's tag once the agent has the call."""
    peer.send(
        request("INVITE", peer.port, body=OFFER_PCMU.format(port=9), extra=headers), ("127.0.0.1", ua.port)
    )
    ok = await peer.response(200)
    to_tag = ok.headers["To"].split("tag=")[1]
    peer.send(request("ACK", peer.port, branch="z9hG4bK-ack", to_tag=to_tag), ("127.0.0.1", ua.port))
    await asyncio.wait_for(wait_for_call(calls), 2)
    return ok, to_tag


async def wait_for_call(calls: list[SipCall]) -> None:
    while not calls:
        await asyncio.sleep(0.01)


def answer_refresh(refresh: SipRequest, *extra: tuple[str, str]) -> bytes:
    """The peer's 200 to our refresh, with its (unchanged) SDP answer."""
    response = make_response(
        refresh,
        200,
        body=OFFER_PCMU.format(port=9).encode(),
        content_type="application/sdp",
        extra=[("Contact", "<sip:caller@127.0.0.1>"), *extra],
    )
    return bytes(response)


async def test_our_refresh_answered_481_ends_the_call_with_bye(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    ok, _ = await call_in(ua, peer, calls, "Supported: timer", "Session-Expires: 2;refresher=uas")
    assert ok.headers["Session-Expires"] == "2;refresher=uas"
    assert ok.headers.get_all("Require") == ["timer"]
    assert "timer" in ok.headers.get_all("Supported")

    refresh = await peer.request("INVITE", timeout=3)
    # We are the uac of our refresh, so the refresher is "uac" now; the SDP is the one we answered with.
    assert refresh.headers["Session-Expires"] == "2;refresher=uac"
    assert refresh.headers["Min-SE"] == "1" and "timer" in refresh.headers.get_all("Supported")
    assert refresh.body == ok.body
    peer.send(reply(refresh, 481, "Call/Transaction Does Not Exist"), ("127.0.0.1", ua.port))
    bye = await peer.request("BYE")
    peer.send(reply(bye, 200), ("127.0.0.1", ua.port))
    await asyncio.wait_for(calls[0].ended.wait(), 2)
    assert calls[0].hangup_by == "agent" and calls[0].end_reason == "session-refresh-failed"


async def test_peer_reinvite_during_our_refresh_gets_491_and_our_refresh_completes(
    start_agent: StartAgent,
) -> None:
    ua, peer, calls = await start_agent(session_expires=60, min_se=1)
    _, to_tag = await call_in(ua, peer, calls, "Supported: timer", "Session-Expires: 2;refresher=uas")
    refresh = await peer.request("INVITE", timeout=3)

    # Glare (RFC 3261 14.2): the peer's own re-INVITE while ours waits for its answer.
    theirs = request(
        "INVITE", peer.port, branch="z9hG4bK-glare", cseq=2, to_tag=to_tag, body=OFFER_PCMU.format(port=9)
    )
    peer.send(theirs, ("127.0.0.1", ua.port))
    assert (await peer.response(491)).headers["CSeq"] == "2 INVITE"
    peer.send(
        request("ACK", peer.port, branch="z9hG4bK-glare", cseq=2, to_tag=to_tag), ("127.0.0.1", ua.port)
    )

    peer.send(answer_refresh(refresh, ("Session-Expires", "2;refresher=uac")), ("127.0.0.1", ua.port))
    ack = await peer.request("ACK")
    assert ack.headers["CSeq"] == refresh.headers["CSeq"].replace("INVITE", "ACK")
    # The 2xx restarted the clock: another refresh a second later, and the call is still up.
    again = await peer.request("INVITE", timeout=3)
    assert again.headers["CSeq"] != refresh.headers["CSeq"] and again.body == refresh.body
    assert calls[0].state == "confirmed"


async def test_caller_without_the_extension_is_kept_alive_by_our_refreshes(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent(session_expires=2, min_se=1)
    ok, _ = await call_in(ua, peer, calls)  # no Supported: timer
    # Our own timer: we refresh, and ask nothing of a caller that would not understand it.
    assert ok.headers["Session-Expires"] == "2;refresher=uas"
    assert "Require" not in ok.headers
    assert ua.session_agreement(calls[0]) == SessionAgreement(2, True, False, 1)
    for _ in range(2):
        refresh = await peer.request("INVITE", timeout=3)
        peer.send(answer_refresh(refresh), ("127.0.0.1", ua.port))  # a 200 that knows no Session-Expires
        await peer.request("ACK")
    assert calls[0].state == "confirmed"
    assert ua.session_agreement(calls[0]) == SessionAgreement(2, True, False, 1)


@pytest.mark.parametrize(("session_expires", "status"), [(None, 420), (60, 200)])
async def test_require_timer_is_accepted_only_with_timers_on(
    start_agent: StartAgent, session_expires: int | None, status: int
) -> None:
    ua, peer, _ = await start_agent(session_expires=session_expires, min_se=1)
    extra = ("Require: timer", "Session-Expires: 90;refresher=uac")
    peer.send(
        request("INVITE", peer.port, body=OFFER_PCMU.format(port=9), extra=extra), ("127.0.0.1", ua.port)
    )
    final = await peer.response(status)
    if status == 420:
        assert final.headers["Unsupported"] == "timer"
    else:
        assert final.headers["Session-Expires"] == "60;refresher=uac"  # lowered to ours, never raised


async def test_timers_off_leave_our_answers_as_they_were(start_agent: StartAgent) -> None:
    ua, peer, calls = await start_agent()
    ok, _ = await call_in(ua, peer, calls, "Supported: timer", "Session-Expires: 1800")
    assert "Session-Expires" not in ok.headers and "Supported" not in ok.headers
    assert ua.session_agreement(calls[0]) is None
