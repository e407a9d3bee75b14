"""Our side of a sipp test: a stub in place of the agent loop that records what each call delivered, and
the audio helpers that compare it with what was sent."""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from telephony.codecs import pcm16_to_ulaw, ulaw_to_pcm16
from telephony.sip.ua import SipCall, UserAgent
from tests.telephony.sipp.sipp_peer import LOOPBACK, Addr

PCM_FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16
CALLER_NUMBER = "+15550100002"  # the From user of the uac_* scenarios


# --- the agent stub ----------------------------------------------------------------------------------
@dataclass(eq=False)
class CallRecord:
    """What one call delivered to the agent."""

    call: SipCall
    frames: list[bytes] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    answered_at: float = field(default_factory=time.monotonic)
    notes: dict[str, Any] = field(default_factory=dict)  # whatever a behaviour wants to report


Behaviour = Callable[[SipCall, CallRecord], Awaitable[None]]


async def stay_on_the_line(call: SipCall, record: CallRecord) -> None:
    await call.ended.wait()


class AgentStub:
    """The UA's call handler in place of the agent loop: records audio frames and digits of every call,
    then runs a behaviour (by default: stay on the line until the caller hangs up)."""

    def __init__(self, behaviour: Behaviour = stay_on_the_line) -> None:
        self.behaviour = behaviour
        self.records: list[CallRecord] = []
        self.answered = asyncio.Event()

    async def __call__(self, call: SipCall) -> None:
        record = CallRecord(call)
        call.audio_sink = record.frames.append
        call.dtmf_sink = record.digits.append
        self.records.append(record)
        self.answered.set()
        await self.behaviour(call, record)

    @property
    def only(self) -> CallRecord:
        assert len(self.records) == 1, f"expected one call, the agent saw {len(self.records)}"
        return self.records[0]


def speak_then_hang_up(pcm16: bytes) -> Behaviour:
    """The agent says `pcm16`, waits for the tail of sipp's -rtp_echo to come back, and hangs up."""

    async def behaviour(call: SipCall, record: CallRecord) -> None:
        await asyncio.sleep(0.2)
        call.play(pcm16)
        await call.wait_drained()
        await asyncio.sleep(0.3)
        record.notes["frames_played"] = call.frames_played
        await call.hangup()

    return behaviour


AgentFactory = Callable[..., Awaitable[UserAgent]]


def agent_address(agent: UserAgent) -> Addr:
    return (LOOPBACK, agent.port)


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# --- audio --------------------------------------------------------------------------------------------
def pcm_frames(pcm16: bytes) -> list[bytes]:
    """Whole 20 ms frames only: a trailing partial frame is never sent as it is."""
    return [
        pcm16[i : i + PCM_FRAME_BYTES] for i in range(0, len(pcm16) - PCM_FRAME_BYTES + 1, PCM_FRAME_BYTES)
    ]


def through_g711(pcm16: bytes) -> bytes:
    """What PCM16 sounds like after one mu-law encode/decode: the best a PCMU peer can hear."""
    return ulaw_to_pcm16(pcm16_to_ulaw(pcm16))


def echoed_frames(said_pcm16: bytes, record: CallRecord) -> tuple[int, int]:
    """Of the frames the agent said, how many came back unchanged through sipp's -rtp_echo: (matched,
    said). What comes back went through G.711 once, so that is what to look for."""
    padded = said_pcm16 + bytes(-len(said_pcm16) % PCM_FRAME_BYTES)  # play() pads the last frame
    heard = [through_g711(frame) for frame in pcm_frames(padded)]
    return frames_in_order(heard, record.frames), len(heard)


def frames_in_order(expected: list[bytes], received: list[bytes]) -> int:
    """How many of the expected frames arrived, unchanged and in order (longest common subsequence);
    concealment or silence around them does not count against it."""
    matcher = difflib.SequenceMatcher(None, expected, received, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())
