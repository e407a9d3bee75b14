"""RFC 4028 session timers against sipp: the caller refreshing (with re-INVITE or UPDATE), the caller going
quiet, an interval below our Min-SE, the agent refreshing (with re-INVITE, or UPDATE when the peer allows
it), outbound calls that offer the extension (and meet a 422), and a 2xx to our refresh that comes after
our BYE.

Our side runs with a 2 s Min-SE so that a session interval of a few seconds, and so every scenario, takes
seconds (RFC 4028 puts the floor at 90 s; the setting enforces that, the UserAgent takes what it is given).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import NamedTuple

import pytest

from telephony.sip.call import SipCall
from telephony.sip.session_timer import SessionAgreement
from telephony.sip.ua import UserAgent
from tests.telephony.sipp.agent_side import (
    AgentFactory,
    AgentStub,
    Behaviour,
    CallRecord,
    agent_address,
    wait_for,
)
from tests.telephony.sipp.sipp_peer import LOOPBACK, Sipp, SippResult

pytestmark = pytest.mark.sipp

MIN_SE = 2
INTERVAL = 3  # what the sipp callers ask for: the agent ends a silent session 3 - min(32, 3/3) = 2 s on
TIMERS = {"session_expires": 60, "min_se": MIN_SE}


class MediaSample(NamedTuple):
    at: float
    direction: str
    remote: tuple[str, int]
    sent: int
    received: int


def logged(result: SippResult, pattern: str) -> list[tuple[str, ...]]:
    """The groups of every line the scenario's <log> actions wrote that matches `pattern`."""
    return [match.groups() for match in re.finditer(pattern, result.logs)]


def watch_media(
    samples: dict[str, list[MediaSample]], agreements: dict[str, SessionAgreement | None]
) -> Behaviour:
    """Samples each call's stream every 50 ms until the call ends, and notes its session timer."""

    async def watch(call: SipCall, record: CallRecord) -> None:
        assert call.agent is not None
        agreements[call.call_id] = call.agent.session_agreement(call)
        seen = samples.setdefault(call.call_id, [])
        media = call.media
        while not call.ended.is_set():
            report = media.report()
            at = time.monotonic()
            seen.append(
                MediaSample(at, media.direction, media.remote, report.packets_sent, report.packets_received)
            )
            await asyncio.sleep(0.05)
        assert call.media is media, "a refresh replaced the call's RTP stream"

    return watch


def assert_media_undisturbed(seen: list[MediaSample]) -> None:
    """No hold, no new address, and packets flowed both ways all along."""
    assert {sample.direction for sample in seen} == {"sendrecv"}
    assert len({sample.remote for sample in seen}) == 1
    for what in ("sent", "received"):
        counts = [(sample.at, sample.sent if what == "sent" else sample.received) for sample in seen]
        stalls = stalls_over(counts, 0.3)
        assert stalls == [], f"no RTP {what} for over 0.3 s from {stalls} s into the call"


@pytest.mark.parametrize("calls", [1, 3])
async def test_caller_refreshes_keep_the_call_and_its_media_as_they_were(
    sipp: Sipp, start_agent: AgentFactory, calls: int
) -> None:
    samples: dict[str, list[MediaSample]] = {}
    agreements: dict[str, SessionAgreement | None] = {}
    stub = AgentStub(watch_media(samples, agreements))
    agent = await start_agent(stub, **TIMERS)
    # -rtp_echo: what the agent sends comes back, so reception is watched as well as sending.
    result = await sipp.run(
        "uac_session_timer_refresh.xml",
        remote=agent_address(agent),
        calls=calls,
        args=[*keys(session_expires=INTERVAL), "-d", "1000", "-rtp_echo", "-l", str(calls), "-r", "10"],
    )

    assert result.returncode == 0, result.explain()
    assert result.successful == calls, result.explain()
    # Every 200 (to the INVITE and to the three refreshes) kept the caller as refresher with Require: timer.
    answers = logged(result, r"(answer|refresh\d): Session-Expires (\d+);refresher=uac Require (timer)")
    assert len(answers) == 4 * calls, result.logs
    assert {(interval, require) for _, interval, require in answers} == {(str(INTERVAL), "timer")}
    await wait_for(lambda: all(r.call.ended.is_set() for r in stub.records), what="every call to end")
    for record in stub.records:
        call = record.call
        assert agreements[call.call_id] == SessionAgreement(INTERVAL, False, True, MIN_SE)
        # The caller hung up after 4 s: longer than the interval, so only the refreshes kept the call up.
        assert call.hangup_by == "caller" and call.end_reason == "bye"
        seen = samples[call.call_id]
        assert seen[-1].at - seen[0].at >= 3.5, "the call ended early"
        assert_media_undisturbed(seen)  # nothing about the media changed
    # The agent answered each refresh with exactly the SDP it answered its call with (same o= version):
    # one o= line per call (the session id is random per call), in all four of its 200s.
    sent = Counter(origin for _, origin in logged(result, r"(answer|refresh\d): .*SDP (o=[^\r\n]*)"))
    assert sorted(sent.values()) == [4] * calls, sent


async def test_caller_refreshing_with_update_keeps_the_call_and_its_media(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    samples: dict[str, list[MediaSample]] = {}
    agreements: dict[str, SessionAgreement | None] = {}
    stub = AgentStub(watch_media(samples, agreements))
    agent = await start_agent(stub, **TIMERS)
    result = await sipp.run(
        "uac_session_timer_update_refresh.xml",
        remote=agent_address(agent),
        args=[*keys(session_expires=INTERVAL), "-d", "1000", "-rtp_echo"],
    )

    assert result.returncode == 0, result.explain()
    assert logged(result, r"answer: Session-Expires (\d+);refresher=uac Require (timer) Allow (UPDATE)") == [
        (str(INTERVAL), "timer", "UPDATE")
    ]
    # Each 200 to an UPDATE kept the caller as refresher, required the extension and carried no body.
    updates = logged(
        result, r"(update\d): Session-Expires (\d+);refresher=uac Require (timer) Content-Length (\d+)"
    )
    assert updates == [(f"update{n}", str(INTERVAL), "timer", "0") for n in (1, 2, 3)], result.logs
    await wait_for(stub.only.call.ended.is_set, what="the call to end")
    call = stub.only.call
    assert agreements[call.call_id] == SessionAgreement(INTERVAL, False, True, MIN_SE)
    # Three UPDATEs 1 s apart and a BYE 1 s after the last: 4 s, past the 3 s interval.
    assert call.hangup_by == "caller" and call.end_reason == "bye"
    seen = samples[call.call_id]
    assert seen[-1].at - seen[0].at >= 3.5, "the call ended early"
    assert_media_undisturbed(seen)


def stalls_over(counts: list[tuple[float, int]], seconds: float) -> list[float]:
    """When a packet counter stood still for more than `seconds` (once it had started): measured between
    samples of one run of equal values, so a late sample alone is no stall."""
    stalls: list[float] = []
    run_start = counts[0]
    for sample in counts[1:]:
        if sample[1] != run_start[1]:
            run_start = sample
        elif run_start[1] > 0 and sample[0] - run_start[0] > seconds:
            stalls.append(round(run_start[0] - counts[0][0], 2))
            run_start = sample  # each stall once
    return stalls


def keys(**values: int) -> list[str]:
    args: list[str] = []
    for name, value in values.items():
        args += ["-key", name, str(value)]
    return args


async def test_agent_hangs_up_when_the_caller_stops_refreshing(sipp: Sipp, start_agent: AgentFactory) -> None:
    async def time_the_end(call: SipCall, record: CallRecord) -> None:
        await call.ended.wait()
        record.notes["lasted"] = time.monotonic() - record.answered_at

    stub = AgentStub(time_the_end)
    agent = await start_agent(stub, **TIMERS)
    result = await sipp.run(
        "uac_session_timer_lapse.xml",
        remote=agent_address(agent),
        args=[*keys(session_expires=INTERVAL), "-d", "1000"],
    )

    assert result.returncode == 0, result.explain()
    record = stub.only
    call = record.call
    assert call.ended.is_set()
    # The agent session saw an ordinary end of call, by the agent's side, for the reason it happened.
    assert call.hangup_by == "agent" and call.end_reason == "session-expired"
    assert logged(result, r"BYE Reason: *(.*)") == [('SIP;cause=408;text="Session expired"',)]
    assert agent.calls == {}
    # The refresh came 1 s after the answer and restarted the clock: the BYE is due 3 - min(32, 3/3) = 2 s
    # after it, not 2 s after the answer. A timer never fires early, so this bound cannot be noise.
    assert record.notes["lasted"] >= 1.0 + 2.0 - 0.1, record.notes


async def test_interval_below_our_min_se_gets_422_then_the_retry_is_accepted(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    stub = AgentStub()
    agent = await start_agent(stub, **TIMERS)
    result = await sipp.run("uac_session_timer_too_small.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    assert logged(result, r"422 Min-SE: (\d+)") == [(str(MIN_SE),)]
    assert logged(result, r"retry: Session-Expires (\d+);refresher=uac Require (timer)") == [
        (str(MIN_SE), "timer")
    ]
    # The refused INVITE never reached the agent; the retried one did, once.
    assert len(stub.records) == 1
    await wait_for(stub.only.call.ended.is_set, what="the call to end")
    assert stub.only.call.hangup_by == "caller"


async def test_agent_refreshes_when_the_caller_asks_it_to(sipp: Sipp, start_agent: AgentFactory) -> None:
    agreements: list[SessionAgreement | None] = []

    async def remember(call: SipCall, record: CallRecord) -> None:
        assert call.agent is not None
        agreements.append(call.agent.session_agreement(call))
        await call.ended.wait()

    stub = AgentStub(remember)
    agent = await start_agent(stub, **TIMERS)
    started = time.monotonic()
    result = await sipp.run(
        "uac_session_timer_agent_refreshes.xml",
        remote=agent_address(agent),
        args=keys(session_expires=INTERVAL),
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.explain()
    assert agreements == [SessionAgreement(INTERVAL, True, True, MIN_SE)]
    refreshes = logged(
        result, r"(refresh\d): Session-Expires (\d+);refresher=uac Supported (timer) SDP (o=[^\r\n]*)"
    )
    assert [(name, interval, supported) for name, interval, supported, _ in refreshes] == [
        ("refresh1", str(INTERVAL), "timer"),
        ("refresh2", str(INTERVAL), "timer"),
    ]
    # The refreshes offered the SDP the agent answered the call with, version and all (RFC 3264 8).
    answered = logged(result, r"answer: .*SDP (o=[^\r\n]*)")
    assert answered and {origin for *_, origin in refreshes} == {answered[0][0]}
    # Two refreshes at half the interval each: the second cannot come before 3 s.
    assert elapsed >= INTERVAL
    await wait_for(stub.only.call.ended.is_set, what="the call to end")
    assert stub.only.call.hangup_by == "caller"


async def test_agent_refreshes_with_update_when_the_caller_allows_it(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agreements: list[SessionAgreement | None] = []

    async def remember(call: SipCall, record: CallRecord) -> None:
        assert call.agent is not None
        agreements.append(call.agent.session_agreement(call))
        await call.ended.wait()

    stub = AgentStub(remember)
    agent = await start_agent(stub, **TIMERS)
    started = time.monotonic()
    result = await sipp.run(
        "uac_session_timer_agent_updates.xml",
        remote=agent_address(agent),
        args=keys(session_expires=INTERVAL),
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.explain()
    assert agreements == [SessionAgreement(INTERVAL, True, True, MIN_SE)]
    assert logged(result, r"answer: Session-Expires (\d+);refresher=uas Allow (UPDATE)") == [
        (str(INTERVAL), "UPDATE")
    ]
    refreshes = logged(
        result, r"(refresh\d): Session-Expires (\d+);refresher=uac Supported (timer) Content-Length (\d+)"
    )
    assert refreshes == [(f"refresh{n}", str(INTERVAL), "timer", "0") for n in (1, 2)], result.logs
    assert elapsed >= INTERVAL  # two refreshes at half the interval each
    await wait_for(stub.only.call.ended.is_set, what="the call to end")
    assert stub.only.call.hangup_by == "caller"


# --- outbound: the agent as the UAC -------------------------------------------------------------------
async def place_call(agent: UserAgent, port: int) -> SipCall:
    return await agent.invite(
        f"sip:+15550100009@{LOOPBACK}:{port}", from_uri=f"<sip:agent@{LOOPBACK}>", peer=(LOOPBACK, port)
    )


async def test_outbound_call_offers_the_timer_and_refreshes_when_told(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agent = await start_agent(**TIMERS)
    trunk = await sipp.start("uas_session_timer.xml", args=keys(session_expires=INTERVAL))
    call = await place_call(agent, trunk.port)
    assert agent.session_agreement(call) == SessionAgreement(INTERVAL, True, True, MIN_SE)
    # The refresh is due at 1.5 s; hang up after it, before the second one.
    await wait_for(lambda: call.ack_cseq > call.invite_cseq, timeout=4.0, what="the refresh's ACK")
    assert call.state == "confirmed" and agent.session_agreement(call) is not None
    await call.hangup()
    result = await trunk.wait()

    assert result.returncode == 0, result.explain()
    offered = logged(result, r"invite: Supported (timer) Session-Expires ([^\r\n]*?) Min-SE (\d+)")
    assert offered == [("timer", "60", str(MIN_SE))]
    refreshed = logged(result, r"refresh1: Supported (timer) Session-Expires ([^\r\n]*?) Min-SE")
    assert refreshed == [("timer", f"{INTERVAL};refresher=uac")]
    sdp = logged(result, r"(invite|refresh1): .*SDP (o=[^\r\n]*)")
    assert len(sdp) == 2 and sdp[0][1] == sdp[1][1], sdp


async def test_outbound_call_retries_with_the_min_se_of_a_422(sipp: Sipp, start_agent: AgentFactory) -> None:
    agent = await start_agent(**TIMERS)
    trunk = await sipp.start("uas_session_timer_422.xml", args=keys(min_se=120))
    call = await place_call(agent, trunk.port)
    assert agent.session_agreement(call) == SessionAgreement(120, False, True, 120)
    await call.hangup()
    result = await trunk.wait()

    assert result.returncode == 0, result.explain()
    first = logged(result, r"first: Supported timer Session-Expires ([^\r\n]*?) Min-SE (\d+)")
    retry = logged(result, r"retry: Supported timer Session-Expires ([^\r\n]*?) Min-SE (\d+)")
    assert first == [("60", str(MIN_SE))]
    assert retry == [("120", "120")]


async def test_outbound_call_refreshed_with_update_when_the_trunk_allows_it(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agent = await start_agent(**TIMERS)
    trunk = await sipp.start("uas_session_timer_update.xml", args=keys(session_expires=INTERVAL))
    call = await place_call(agent, trunk.port)
    answered_at = time.monotonic()
    assert "UPDATE" in call.peer_allow
    # The refresh is due 1.5 s after the answer; unrefreshed, the session would end 3 - 3/3 = 2 s after it.
    # The call outlives that only if the 200 to the UPDATE restarted the clock.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call.ended.wait(), answered_at + 2.5 - time.monotonic())
    assert call.state == "confirmed" and call.dialog.local_seq > call.invite_cseq
    assert call.ack_cseq == call.invite_cseq  # an UPDATE is not ACKed (sipp would fail on an ACK, too)
    await call.hangup()
    result = await trunk.wait()

    assert result.returncode == 0, result.explain()
    assert logged(result, r"invite: Allow (UPDATE)") == [("UPDATE",)]
    refreshed = logged(result, r"refresh1: Session-Expires ([^ ]+) Supported (timer) Content-Length (\d+)")
    assert refreshed == [(f"{INTERVAL};refresher=uac", "timer", "0")]


async def test_outbound_2xx_to_our_refresh_after_our_bye_is_acked(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agent = await start_agent(**TIMERS)
    trunk = await sipp.start("uas_session_timer_late_2xx.xml", args=keys(session_expires=INTERVAL))
    call = await place_call(agent, trunk.port)
    answered = call.negotiated
    await wait_for(lambda: call.reinvite_pending, timeout=4.0, what="the refresh re-INVITE")
    await call.hangup()  # the trunk answers the BYE, then the re-INVITE
    result = await trunk.wait()

    assert result.returncode == 0, result.explain()  # the ACK came, or sipp would have timed out
    [(refresh_cseq,)] = logged(result, r"refresh: CSeq (\d+) INVITE")
    assert logged(result, r"ack1: CSeq (\d+) ACK") == [(refresh_cseq,)]
    # The call stayed ended: the late answer (media moved by 2 ports) was not applied, no timer restarted.
    assert call.state == "terminated" and call.hangup_by == "caller" and agent.calls == {}
    assert call.negotiated == answered and call.negotiated.remote_port == trunk.media_port
    assert agent.session_agreement(call) is None
