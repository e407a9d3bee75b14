"""Where the media goes and when it stops, against sipp: a late offer, a re-INVITE that moves the
caller's media, the RTP timeout; and a call over TCP."""

from __future__ import annotations

import asyncio
import time

import pytest

from telephony.sip.call import SipCall
from tests.telephony.sipp.agent_side import (
    AgentFactory,
    AgentStub,
    CallRecord,
    agent_address,
    echoed_frames,
    speak_then_hang_up,
    wait_for,
)
from tests.telephony.sipp.sipp_peer import LOOPBACK, Sipp, free_media_port

pytestmark = pytest.mark.sipp


async def test_late_offer_takes_the_answer_from_the_ack(
    sipp: Sipp, start_agent: AgentFactory, goodbye_pcm: bytes
) -> None:
    stub = AgentStub(speak_then_hang_up(goodbye_pcm))
    agent = await start_agent(stub)
    result = await sipp.run("uac_late_offer.xml", remote=agent_address(agent), args=["-rtp_echo"])

    assert result.returncode == 0, result.explain()
    record = stub.only
    assert record.call.hangup_by == "agent"
    # sipp never sends RTP of its own here: an echo proves our RTP went where the ACK's answer said.
    matched, said = echoed_frames(goodbye_pcm, record)
    assert matched >= 0.95 * said, f"{matched} of {said} frames came back ({record.call.media.report()})"


async def test_reinvite_moves_our_media_to_the_new_address(sipp: Sipp, start_agent: AgentFactory) -> None:
    samples: list[tuple[float, tuple[str, int], int]] = []

    async def watch_media(call: SipCall, record: CallRecord) -> None:
        while not call.ended.is_set():
            samples.append((time.monotonic(), call.media.remote, len(record.frames)))
            await asyncio.sleep(0.05)

    stub = AgentStub(watch_media)
    agent = await start_agent(stub)
    # sipp -rtp_echo echoes on its media port and on that port + 2: the re-INVITE moves us to the latter.
    media_port = free_media_port()
    moved_to = (LOOPBACK, media_port + 2)
    result = await sipp.run(
        "uac_media_moves.xml",
        remote=agent_address(agent),
        args=["-rtp_echo", "-key", "alt_media_port", str(moved_to[1])],
        media_port=media_port,
    )

    assert result.returncode == 0, result.explain()
    remotes = {remote for _, remote, _ in samples}
    assert (LOOPBACK, media_port) in remotes, f"media never went to the first port: {remotes}"
    after = [(at, frames) for at, remote, frames in samples if remote == moved_to]
    assert after, f"our RTP never moved to {moved_to}: {remotes}"
    # sipp echoes only what reaches it: echoes keep coming after the move, so our packets reach the new
    # port (and we accept them from there). 1.5 s on the new port is ~75 packets.
    assert after[-1][1] - after[0][1] >= 40, after


async def test_rtp_timeout_ends_the_call_with_bye(
    sipp: Sipp, start_agent: AgentFactory, caller_ulaw: bytes
) -> None:
    stub = AgentStub()
    agent = await start_agent(stub, rtp_timeout_s=1.0)
    sipp.add_file("caller.ulaw", caller_ulaw)
    result = await sipp.run("uac_media_stops.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    record = stub.only
    await wait_for(record.call.ended.is_set, what="the call to end")
    assert record.call.hangup_by == "agent" and record.call.end_reason == "rtp-timeout"
    lasted = time.monotonic() - record.answered_at
    speech_s = len(caller_ulaw) / 8000
    # Not while the caller was still sending, and soon after it stopped.
    assert speech_s + 0.9 <= lasted, f"call ended after {lasted:.2f} s, the caller spoke for {speech_s:.2f} s"
    assert lasted <= speech_s + 3.0, f"call ended after {lasted:.2f} s, the caller spoke for {speech_s:.2f} s"
    assert "RTP" in result.logs or "408" in result.logs, result.logs


async def test_call_over_tcp(sipp: Sipp, start_agent: AgentFactory) -> None:
    stub = AgentStub()
    agent = await start_agent(stub)
    # -t t1: one TCP connection; the agent listens for TCP on its SIP port too (RFC 3261 18).
    result = await sipp.run(
        "uac_basic_call.xml", remote=agent_address(agent), calls=3, args=["-t", "t1", "-d", "200", "-r", "5"]
    )

    assert result.returncode == 0, result.explain()
    assert result.successful == 3, result.explain()
    await wait_for(lambda: len(stub.records) == 3 and all(r.call.ended.is_set() for r in stub.records))
    assert {record.call.transport for record in stub.records} == {"TCP"}
    assert {record.call.hangup_by for record in stub.records} == {"caller"}
