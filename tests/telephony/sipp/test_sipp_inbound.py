"""Inbound calls placed by sipp: caller audio, CANCEL while ringing, UPDATE while ringing, hold and resume,
a re-INVITE without SDP, the agent hanging up, capacity limits and lossy signalling."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from telephony.codecs import ulaw_to_pcm16
from telephony.sip.call import SipCall
from tests.telephony.sipp.agent_side import (
    CALLER_NUMBER,
    AgentFactory,
    AgentStub,
    CallRecord,
    agent_address,
    echoed_frames,
    frames_in_order,
    pcm_frames,
    speak_then_hang_up,
    wait_for,
)
from tests.telephony.sipp.sipp_peer import Sipp

pytestmark = pytest.mark.sipp


@pytest.mark.parametrize("calls", [1, 20])
async def test_caller_audio_reaches_the_agent_unchanged(
    sipp: Sipp, start_agent: AgentFactory, caller_ulaw: bytes, calls: int
) -> None:
    stub = AgentStub()
    agent = await start_agent(stub)
    sipp.add_file("caller.ulaw", caller_ulaw)
    speech_ms = len(caller_ulaw) // 8
    # The caller hangs up 0.4 s after its last packet: time for the jitter buffer to play out. With 20
    # calls, all are up at once (-l), each with its own RTP stream.
    result = await sipp.run(
        "uac_call_audio.xml",
        remote=agent_address(agent),
        calls=calls,
        args=["-d", str(speech_ms + 400), "-l", str(calls), "-r", "50"],
    )

    assert result.returncode == 0, result.explain()
    assert result.successful == calls, result.explain()
    assert len(stub.records) == calls
    expected = pcm_frames(ulaw_to_pcm16(caller_ulaw))
    for record in stub.records:
        assert record.call.remote_number == CALLER_NUMBER
        assert record.call.hangup_by == "caller"
        matched = frames_in_order(expected, record.frames)
        report = record.call.media.report()
        # sipp sends the file byte for byte at 20 ms; on loopback every frame should reach the agent as
        # sent, and only its own call's frames (a few concealed ones at most around them).
        assert matched >= 0.95 * len(expected), (
            f"{matched} of {len(expected)} caller frames reached the agent unchanged and in order "
            f"({len(record.frames)} frames delivered; {report})"
        )
        assert len(record.frames) <= len(expected) + 10, f"{len(record.frames)} frames delivered ({report})"
        assert report.packets_received >= len(expected), report


async def test_cancel_while_ringing_never_reaches_the_agent(sipp: Sipp, start_agent: AgentFactory) -> None:
    stub = AgentStub()
    agent = await start_agent(stub, ring_ms=3000)
    started = time.monotonic()
    result = await sipp.run("uac_cancel.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    # The 487 came from the CANCEL, not from the end of the ringing time.
    assert time.monotonic() - started < 2.5
    await asyncio.sleep(0.2)
    assert stub.records == [], "a cancelled call was handed to the agent"
    assert agent.calls == {}


async def test_bye_while_ringing_never_reaches_the_agent(sipp: Sipp, start_agent: AgentFactory) -> None:
    stub = AgentStub()
    agent = await start_agent(stub, ring_ms=3000)
    started = time.monotonic()
    result = await sipp.run("uac_early_bye.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    # The 487 came from the BYE (RFC 3261 15.1.2), not from the end of the ringing time.
    assert time.monotonic() - started < 2.5
    await asyncio.sleep(0.2)
    assert stub.records == [], "a call hung up in its early dialog was handed to the agent"
    assert agent.calls == {}


@pytest.mark.parametrize(
    ("hold_offer", "held_direction"), [("sendonly", "recvonly"), ("inactive", "inactive")]
)
async def test_hold_then_resume(
    sipp: Sipp, start_agent: AgentFactory, hold_offer: str, held_direction: str
) -> None:
    samples: list[tuple[float, str, int]] = []

    async def watch_media(call: SipCall, record: CallRecord) -> None:
        while not call.ended.is_set():
            samples.append((time.monotonic(), call.media.direction, call.media.report().packets_sent))
            await asyncio.sleep(0.05)

    stub = AgentStub(watch_media)
    agent = await start_agent(stub)
    result = await sipp.run(
        "uac_hold_resume.xml", remote=agent_address(agent), args=["-key", "hold_direction", hold_offer]
    )

    assert result.returncode == 0, result.explain()
    await wait_for(lambda: stub.only.call.ended.is_set(), what="the call to end")
    directions = [direction for _, direction, _ in samples]
    phases = [d for i, d in enumerate(directions) if i == 0 or directions[i - 1] != d]
    assert phases == ["sendrecv", held_direction, "sendrecv"], phases
    held = [(at, sent) for at, direction, sent in samples if direction == held_direction]
    # sipp holds for 1.5 s; while held we send nothing (one packet may already be on its way).
    assert held[-1][0] - held[0][0] >= 1.0, held
    assert held[-1][1] - held[0][1] <= 1, f"{held[-1][1] - held[0][1]} RTP packets sent while on hold"
    resumed = [sent for at, direction, sent in samples if direction == "sendrecv" and at > held[-1][0]]
    assert resumed and resumed[-1] - held[-1][1] >= 20, "media did not come back after the resume"


async def test_reinvite_before_the_ack_is_answered(sipp: Sipp, start_agent: AgentFactory) -> None:
    stub = AgentStub()
    agent = await start_agent(stub)
    hold = ["-key", "hold_direction", "sendonly"]
    result = await sipp.run("uac_reinvite_before_ack.xml", remote=agent_address(agent), args=hold)

    assert result.returncode == 0, result.explain()
    record = stub.only
    await wait_for(record.call.ended.is_set, what="the call to end")
    assert record.call.hangup_by == "caller"


async def test_update_while_ringing_is_answered_in_the_early_dialog(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    stub = AgentStub()
    agent = await start_agent(stub, ring_ms=1500)
    result = await sipp.run("uac_early_update.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()  # 200 to the plain UPDATE, 500 to the offer, no 481
    assert re.findall(r"update1: 200 Content-Length (\d+)", result.logs) == ["0"]
    [retry_after] = re.findall(r"update2: 500 Retry-After (\d+)", result.logs)
    assert 0 <= int(retry_after) <= 10
    call = stub.only.call
    await wait_for(call.ended.is_set, what="the call to end")
    assert call.hangup_by == "caller" and call.media.direction == "sendrecv"  # the refused hold: unused


async def test_reinvite_without_sdp_gets_our_offer_answered_in_the_ack(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    directions: list[str] = []

    async def watch_direction(call: SipCall, record: CallRecord) -> None:
        while not call.ended.is_set():
            directions.append(call.media.direction)
            await asyncio.sleep(0.05)

    stub = AgentStub(watch_direction)
    agent = await start_agent(stub)
    result = await sipp.run("uac_reinvite_without_sdp.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()  # and so no BYE from the agent after the bare ACK
    [answer] = re.findall(r"answer: (o=[^\n]*)", result.logs)
    [offer1] = re.findall(r"offer1: (o=[^\n]*) a=sendrecv", result.logs)
    [offer2] = re.findall(r"offer2: (o=[^\n]*)", result.logs)
    # Our description never changed (RFC 3264 8: same o= line, version included).
    assert offer1 == answer and offer2.strip() == answer.strip(), result.logs
    call = stub.only.call
    await wait_for(call.ended.is_set, what="the call to end")
    phases = [d for i, d in enumerate(directions) if i == 0 or directions[i - 1] != d]
    # The recvonly answer in the first ACK held our sending; the ACK without an answer changed nothing.
    assert phases == ["sendrecv", "sendonly"], phases
    assert call.hangup_by == "caller" and call.end_reason == "bye"


async def test_agent_hangs_up_after_saying_goodbye(
    sipp: Sipp, start_agent: AgentFactory, goodbye_pcm: bytes
) -> None:
    stub = AgentStub(speak_then_hang_up(goodbye_pcm))
    agent = await start_agent(stub)
    # -rtp_echo: sipp sends every RTP packet it receives back to its sender, so what the agent said
    # comes back to the agent's own audio sink, as the caller's side received it.
    result = await sipp.run("uac_agent_hangs_up.xml", remote=agent_address(agent), args=["-rtp_echo"])

    assert result.returncode == 0, result.explain()
    record = stub.only
    assert record.call.hangup_by == "agent"
    matched, said = echoed_frames(goodbye_pcm, record)
    assert record.notes["frames_played"] == said
    assert matched >= 0.95 * said, (
        f"{matched} of {said} frames the agent said came back through sipp's echo "
        f"({record.call.media.report()})"
    )


async def test_over_capacity_invites_get_503_at_once(sipp: Sipp, start_agent: AgentFactory) -> None:
    release = asyncio.Event()

    async def hold_the_line(call: SipCall, record: CallRecord) -> None:
        await release.wait()
        await call.hangup()

    stub = AgentStub(hold_the_line)
    agent = await start_agent(stub, max_calls=1)
    occupant = await sipp.start("uac_agent_hangs_up.xml", remote=agent_address(agent))
    try:
        await asyncio.wait_for(stub.answered.wait(), 10)
        started = time.monotonic()
        refused = await sipp.run(
            "uac_over_capacity.xml", remote=agent_address(agent), calls=3, args=["-r", "10", "-l", "3"]
        )
        elapsed = time.monotonic() - started
    finally:
        release.set()
    occupied = await occupant.wait()

    assert refused.returncode == 0, refused.explain()
    assert refused.successful == 3, refused.explain()
    assert occupied.returncode == 0, occupied.explain()
    assert len(stub.records) == 1, "an INVITE over capacity reached the agent"
    # At once: no ringing first (the scenario fails on a 180), and no waiting on a timer.
    assert elapsed < 3.0, elapsed


@pytest.mark.parametrize(
    ("scenario", "digits"),
    [("uac_basic_call.xml", []), ("uac_dtmf_info.xml", ["4", "#", "7"])],
    ids=["basic-call", "info-dtmf"],
)
async def test_calls_complete_despite_lost_messages(
    sipp: Sipp, start_agent: AgentFactory, scenario: str, digits: list[str]
) -> None:
    stub = AgentStub()
    agent = await start_agent(stub)
    # 20% of the messages sipp sends or receives are dropped: only retransmissions complete the calls.
    # sipp gives up on a transaction after -max_retrans retransmissions (5 by default): 10 keeps a run
    # of bad luck (p ~ 0.25^11 per transaction) from failing the test.
    result = await sipp.run(
        scenario,
        remote=agent_address(agent),
        calls=10,
        args=["-lost", "20", "-max_retrans", "10", "-r", "20", "-l", "10", "-d", "300"],
    )

    assert result.returncode == 0, result.explain()
    assert result.successful == 10, result.explain()
    assert result.column_total("Lost") > 0, "sipp dropped nothing: the test proved nothing"
    # A call whose ACK was lost can be ended by the caller's BYE (or keyed before it) before our 2xx
    # retransmission brings the ACK back: the agent loop never sees it (or misses its first digits),
    # rightly. Every call that did reach it was a new one, and no retransmitted INFO doubled a digit.
    call_ids = [record.call.call_id for record in stub.records]
    assert call_ids and len(call_ids) == len(set(call_ids)), "a retransmitted INVITE was handled twice"
    for record in stub.records:
        assert record.digits == digits[len(digits) - len(record.digits) :], record.digits
    assert sum(len(record.digits) for record in stub.records) >= len(digits) * len(stub.records) // 2
    await wait_for(lambda: all(r.call.ended.is_set() for r in stub.records), what="every call to end")
    assert {record.call.hangup_by for record in stub.records} == {"caller"}
    await wait_for(lambda: agent.calls == {}, what="no call left open after the losses")
