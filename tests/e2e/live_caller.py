"""A caller on our own SIP/RTP stack for live-call tests: speaks PCM in real time, keeps every loud frame
of the agent's audio with its arrival time, and can echo the agent back like a telephone hybrid."""

from __future__ import annotations

import array
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from telephony.media import MediaClock, RtpPortPool
from telephony.sip.ua import SipCall, UserAgent
from tests.e2e.conftest import RunningServer

SPEECH_LEVEL = 1000  # a frame with a sample above this carries speech
FRAME_S = 0.02


def loud(frame: bytes) -> bool:
    samples = array.array("h", frame)
    return max(samples, default=0) > SPEECH_LEVEL or -min(samples, default=0) > SPEECH_LEVEL


@dataclass
class Heard:
    """The agent's audio: arrival time and PCM of every loud frame."""

    times: list[float] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)

    @property
    def first(self) -> float:
        return self.times[0]

    @property
    def last(self) -> float:
        return self.times[-1]

    @property
    def span_s(self) -> float:
        return self.times[-1] - self.times[0] + FRAME_S


class Caller:
    def __init__(self, call: SipCall) -> None:
        self.call = call
        self.heard = Heard()
        self.echo_gain: float | None = None  # e.g. 0.4 (-8 dB): send the agent's audio straight back
        call.audio_sink = self._on_audio

    @property
    def agent_speech(self) -> list[float]:
        """Arrival time of every loud agent frame so far."""
        return self.heard.times

    def _on_audio(self, frame: bytes) -> None:
        if loud(frame):
            self.heard.times.append(time.monotonic())
            self.heard.frames.append(frame)
        if self.echo_gain is not None:
            gain = self.echo_gain
            self.call.play(array.array("h", (int(s * gain) for s in array.array("h", frame))).tobytes())

    async def speak(self, pcm: bytes) -> tuple[float, float]:
        """Send audio in real time; returns when its first and last frames left."""
        self.call.play(pcm)
        started = time.monotonic()
        await self.call.wait_drained()
        return started, time.monotonic()

    async def agent_starts(self, *, timeout_s: float = 20.0) -> float:
        """Wait for the agent's next loud frame; its arrival time."""
        count = len(self.heard.times)
        deadline = time.monotonic() + timeout_s
        while len(self.heard.times) == count:
            if time.monotonic() > deadline or self.call.state == "terminated":
                raise AssertionError("the agent did not start talking")
            await asyncio.sleep(0.01)
        return self.heard.times[count]

    async def agent_turn(self, *, quiet_s: float = 0.9, timeout_s: float = 20.0) -> Heard:
        """Wait for the agent to talk and then fall silent for `quiet_s`; the loud frames in between."""
        start = len(self.heard.times)
        deadline = time.monotonic() + timeout_s
        while len(self.heard.times) == start:
            if time.monotonic() > deadline or self.call.state == "terminated":
                raise AssertionError("the agent did not answer")
            await asyncio.sleep(0.02)
        while time.monotonic() - self.heard.times[-1] < quiet_s:
            if time.monotonic() > deadline:
                raise AssertionError("the agent did not stop talking")
            await asyncio.sleep(0.02)
        return Heard(self.heard.times[start:], self.heard.frames[start:])


@contextlib.asynccontextmanager
async def dial(server: RunningServer, number: str, *, ports: tuple[int, int]) -> AsyncIterator[Caller]:
    """Call the agent from `number`; hangs up (if the agent has not) when the block ends."""
    ua = UserAgent(
        advertised_host="127.0.0.1", port_pool=RtpPortPool(*ports), clock=MediaClock(), user="caller"
    )
    await ua.start("127.0.0.1", 0)
    try:
        call = await ua.invite(
            server.sip_uri, from_uri=f"<sip:{number}@127.0.0.1>", peer=("127.0.0.1", server.sip_port)
        )
        yield Caller(call)
        if call.state != "terminated":
            await call.hangup()
    finally:
        await ua.close()
