"""`switchboard call`: a test caller over real SIP/RTP.

It speaks each line (synthesised with espeak-ng) once the agent has finished its turn, listens to what comes
back, and measures each turn's latency from the audio itself: from the caller's last speech sample to the
first non-silent agent packet. The agent's words come from the server's transcript API.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.tts import EspeakSynthesizer
from telephony.media import PCM_FRAME_BYTES, SAMPLES_PER_FRAME, MediaClock, RtpPortPool
from telephony.sip.message import SipParseError, SipUri
from telephony.sip.ua import SipCall, UserAgent

SPEECH_LEVEL = 300  # |sample| above this counts as speech (about -40 dBFS); espeak's silence is exact zero
END_OF_TURN_SILENCE_S = 1.2  # the agent's turn is over after this much silence following its speech


@dataclass(slots=True)
class TurnResult:
    caller: str
    agent: str = ""
    latency_ms: float | None = None


@dataclass(slots=True)
class CallResult:
    call_id: str
    greeting: str = ""
    turns: list[TurnResult] = field(default_factory=list)
    hangup: str = "caller"

    def as_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "greeting": self.greeting,
            "turns": [{"caller": t.caller, "agent": t.agent, "latency_ms": t.latency_ms} for t in self.turns],
            "hangup": self.hangup,
        }


def _is_speech(frame: bytes) -> bool:
    samples = array.array("h", frame)
    return max(samples, default=0) > SPEECH_LEVEL or -min(samples, default=0) > SPEECH_LEVEL


def last_speech_sample(pcm: bytes) -> int:
    """Index of the last sample louder than the speech level (-1 if none)."""
    samples = array.array("h", pcm)
    for index in range(len(samples) - 1, -1, -1):
        if abs(samples[index]) > SPEECH_LEVEL:
            return index
    return -1


def first_speech_sample(pcm: bytes) -> int:
    """Index of the first sample louder than the speech level (-1 if none)."""
    for index, sample in enumerate(array.array("h", pcm)):
        if abs(sample) > SPEECH_LEVEL:
            return index
    return -1


def sample_spoken_at(packet_sent_at: float, offset: int) -> float:
    """When sample `offset` of a 20 ms frame was spoken, given when the frame's packet left.

    A phone sends a packet once its 20 ms are captured: the sample was spoken (160 - offset) samples
    before its packet left.
    """
    return packet_sent_at - (SAMPLES_PER_FRAME - offset) / 8000


class _Listener:
    """Timestamps agent audio as it arrives."""

    def __init__(self) -> None:
        self.speech_times: list[float] = []
        self._waiter: tuple[float, asyncio.Future[float]] | None = None

    @property
    def speech_frames(self) -> int:
        return len(self.speech_times)

    @property
    def last_speech_at(self) -> float:
        return self.speech_times[-1] if self.speech_times else 0.0

    def on_audio(self, frame: bytes) -> None:
        if not _is_speech(frame):
            return
        now = time.monotonic()
        self.speech_times.append(now)
        if self._waiter is not None and now >= self._waiter[0]:
            if not self._waiter[1].done():
                self._waiter[1].set_result(now)
            self._waiter = None

    def first_speech_after(self, moment: float) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        index = bisect.bisect_left(self.speech_times, moment)
        if index < len(self.speech_times):
            future.set_result(self.speech_times[index])
        else:
            self._waiter = (moment, future)
        return future


async def _wait_agent_turn_end(call: SipCall, listener: _Listener, timeout: float) -> None:
    """Wait until the agent has spoken and then fallen silent (or hung up)."""
    deadline = time.monotonic() + timeout
    start_frames = listener.speech_frames
    while time.monotonic() < deadline and call.state != "terminated":
        now = time.monotonic()
        if listener.speech_frames > start_frames and now - listener.last_speech_at >= END_OF_TURN_SILENCE_S:
            return
        await asyncio.sleep(0.05)


def _fetch_transcript(api: str, call_id: str) -> dict[str, Any] | None:
    url = f"{api.rstrip('/')}/api/calls/{urllib.parse.quote(call_id, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data: dict[str, Any] = json.load(response)
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


async def place_test_call(
    target: str,
    *,
    from_number: str,
    lines: list[str],
    voice: str | None = None,
    api: str | None = None,
    local_host: str = "127.0.0.1",
    turn_timeout: float = 20.0,
    before_line: Callable[[int], Awaitable[None]] | None = None,
) -> CallResult:
    """Call `target`, speak `lines` turn by turn and measure each reply; `before_line(i)` runs just before
    line i is spoken (tests use it to break something mid-call)."""
    try:
        uri = SipUri.parse(target)
    except SipParseError as exc:
        raise ValueError(f"not a SIP URI: {target!r} ({exc.reason})") from exc
    peer = (uri.host, uri.port or 5060)
    loop = asyncio.get_running_loop()
    synth = EspeakSynthesizer(variant=voice)
    audio = [await loop.run_in_executor(None, synth.synthesize_8k, line) for line in lines]
    ua = UserAgent(
        advertised_host=local_host, port_pool=RtpPortPool(40000, 49999), clock=MediaClock(), user="caller"
    )
    await ua.start(local_host, 0)
    listener = _Listener()
    try:
        call = await ua.invite(target, from_uri=f"<sip:{from_number}@{local_host}>", peer=peer)
        call.audio_sink = listener.on_audio
        result = CallResult(call_id=call.call_id)
        await _wait_agent_turn_end(call, listener, turn_timeout)
        sent_at: dict[int, float] = {}
        call.media.on_speech_sent = lambda count: sent_at.__setitem__(count, time.monotonic())
        for line, pcm in zip(lines, audio, strict=True):
            if call.state == "terminated":
                break
            if before_line is not None:
                await before_line(len(result.turns))
            turn = TurnResult(caller=line)
            result.turns.append(turn)
            base = call.media.frames_played
            last = last_speech_sample(pcm)
            call.play(pcm)
            await call.wait_drained()
            if last >= 0 and call.state != "terminated":
                frame_no = base + last // SAMPLES_PER_FRAME + 1
                spoken_at = sample_spoken_at(sent_at[frame_no], last % SAMPLES_PER_FRAME)
                try:
                    heard_at = await asyncio.wait_for(listener.first_speech_after(spoken_at), turn_timeout)
                    turn.latency_ms = round((heard_at - spoken_at) * 1000, 1)
                except TimeoutError:
                    turn.latency_ms = None
                await _wait_agent_turn_end(call, listener, turn_timeout)
            sent_at.clear()
        if call.state == "terminated":
            result.hangup = "agent"
        else:
            await call.hangup()
            result.hangup = "caller"
    finally:
        await ua.close()
    if api:
        await asyncio.sleep(0.2)  # let the server write the last turn
        transcript = await loop.run_in_executor(None, _fetch_transcript, api, result.call_id)
        if transcript is not None:
            _attach_agent_text(result, transcript)
    return result


def _attach_agent_text(result: CallResult, transcript: dict[str, Any]) -> None:
    agent_turns = [t["text"] for t in transcript.get("turns", []) if t.get("speaker") == "agent"]
    if agent_turns:
        result.greeting = agent_turns[0]
    for turn, text in zip(result.turns, agent_turns[1:], strict=False):
        turn.agent = text


def format_dialogue(result: CallResult) -> str:
    lines = [f"call {result.call_id}"]
    if result.greeting:
        lines.append(f"  agent : {result.greeting}")
    for turn in result.turns:
        lines.append(f"  caller: {turn.caller}")
        latency = f"{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else "no answer"
        lines.append(f"  agent : {turn.agent or '(text unavailable)'}   [latency {latency}]")
    lines.append(f"hangup by {result.hangup}")
    return "\n".join(lines)


__all__ = [
    "PCM_FRAME_BYTES",
    "CallResult",
    "TurnResult",
    "first_speech_sample",
    "format_dialogue",
    "last_speech_sample",
    "place_test_call",
    "sample_spoken_at",
]
