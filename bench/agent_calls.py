"""The callers of `bench.agent`: their script and audio, what they hear, and one call from dial to hang-up.

Each caller is a `telephony.sip` user agent call. It speaks its next line once the agent has been silent
for 700 ms after speaking (or, for the barge-in line, 1 s into the agent's reply), and timestamps what it
sends and what it receives to the packet; speech is told from silence by energy alone.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.tts import EspeakSynthesizer
from crm.seed import DANA_PHONE, MARCUS_PHONE, PRIYA_PHONE, WEEKLY_HOURS
from switchboard.caller import SPEECH_LEVEL, first_speech_sample, last_speech_sample, sample_spoken_at
from telephony.media import SAMPLES_PER_FRAME
from telephony.sip.ua import CallFailed, SipCall, UserAgent

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

HOST = "127.0.0.1"
TURN_END_SILENCE_S = 0.7  # the caller takes the agent's turn as over after this much silence
BARGE_IN_AFTER_S = 1.0  # how far into the long answer the caller starts talking over it
BARGE_IN_STOP_GAP_S = 0.4  # a longer silence than espeak leaves between words (240 ms measured)
AUDIO_GAP_S = 0.040
CALLER_VOICES = ("m3", "f2")  # not the server's voice (en-us), nor those its STT mapping was fitted on
SETUP_TIMEOUT_S = 20.0
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
HOUR_WORDS = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")
# mu-law codes whose sample is within the speech level: deleting them leaves a loud packet non-empty.
_QUIET_ULAW = bytes(
    code
    for code in range(256)
    if abs(audioop.getsample(audioop.ulaw2lin(bytes([code]), 2), 2, 0)) <= SPEECH_LEVEL
)


# --- the script ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One caller line: its parts are spoken as one utterance with `pause_ms` of silence between them."""

    label: str
    parts: tuple[str, ...]
    pause_ms: int = 0
    barge_in: bool = False  # spoken BARGE_IN_AFTER_S into the agent's reply to the previous line

    @property
    def text(self) -> str:
        return " ... ".join(self.parts)


@dataclass(frozen=True, slots=True)
class CallerScript:
    phone: str
    voice: str
    lines: tuple[Line, ...]


SCRIPT_LABELS = ("book", "when", "confirm", "order", "part", "hours", "barge_in", "goodbye")
_SERVICES = ("an oil change", "a tire rotation", "a brake inspection")
_PRODUCTS = ("wiper blades", "synthetic oil", "front brake pads", "tires")
# (caller number, the order that caller asks about, spoken as the recogniser's language model has it)
_CALLERS = (
    (DANA_PHONE, "a one oh four two"),
    (MARCUS_PHONE, "b two oh seven seven"),
    (PRIYA_PHONE, "a one oh four two"),
)


def booking_slots() -> list[tuple[str, str]]:
    """(day and time, part of day) for every half hour the demo garage can fit a 45-minute service,
    noon aside; ordered time first so that consecutive callers ask for different days."""
    slots: list[tuple[int, int, str, str]] = []
    for weekday, (opens, closes) in WEEKLY_HOURS.items():
        minute = opens.hour * 60 + opens.minute
        while minute + 60 <= closes.hour * 60 + closes.minute:
            hour, half = divmod(minute, 60)
            if hour != 12:
                clock = HOUR_WORDS[hour % 12] + (" thirty" if half else "")
                period = "in the morning" if hour < 12 else "in the afternoon"
                slots.append((minute, weekday, f"on {WEEKDAY_NAMES[weekday]} at {clock}", period))
            minute += 30
    return [(when, period) for _, _, when, period in sorted(slots)]


def demo_script(index: int, slots: Sequence[tuple[str, str]]) -> CallerScript:
    """Caller `index`'s dialogue; callers differ in number, voice, service, slot, order and part."""
    phone, order = _CALLERS[index % len(_CALLERS)]
    when, period = slots[index % len(slots)]
    lines = (
        Line("book", (f"i'd like to book {_SERVICES[index % len(_SERVICES)]}",)),
        Line("when", (when, period), pause_ms=600),
        Line("confirm", ("yes please",)),
        Line("order", ("i'm calling about my order", order), pause_ms=500),
        Line("part", (f"do you have {_PRODUCTS[index % len(_PRODUCTS)]} in stock",)),
        Line("hours", ("what are your opening hours",)),
        Line("barge_in", ("where are you located",), barge_in=True),
        Line("goodbye", ("no that's all thank you goodbye",)),
    )
    return CallerScript(phone, CALLER_VOICES[index % len(CALLER_VOICES)], lines)


# One short exchange before the measured calls, so one-time costs of a fresh server process (first
# recogniser, first synthesis, lazy imports, connection pools) are not charged to the first callers.
WARM_UP = CallerScript(PRIYA_PHONE, CALLER_VOICES[0], (Line("warm_up", ("where are you located",)),))


@dataclass(frozen=True, slots=True)
class LineAudio:
    pcm: bytes
    first_sample: int  # first sample above the speech level
    last_sample: int


def synthesize_scripts(scripts: Sequence[CallerScript]) -> dict[tuple[str, Line], LineAudio]:
    """Every distinct (voice, line) once, before any call starts."""
    synthesizers = {voice: EspeakSynthesizer(variant=voice) for voice in {s.voice for s in scripts}}
    audio: dict[tuple[str, Line], LineAudio] = {}
    for script in scripts:
        for line in script.lines:
            key = (script.voice, line)
            if key in audio:
                continue
            pause = bytes(line.pause_ms * 8 * 2)
            pcm = pause.join(synthesizers[script.voice].synthesize_8k(part) for part in line.parts)
            audio[key] = LineAudio(pcm, first_speech_sample(pcm), last_speech_sample(pcm))
    return audio


# --- what the caller hears -----------------------------------------------------------------------------


class AgentAudio:
    """Timestamps the agent's RTP packets as they arrive at the caller's socket (before its jitter
    buffer, which would add its own delay and hide gaps)."""

    def __init__(self) -> None:
        self.speech_times: list[float] = []  # arrival of every packet with speech in it
        self.onsets: list[float] = []  # first speech packet of each agent talkspurt
        self.gaps = 0  # inter-arrival gaps >= 40 ms inside talkspurts
        self.talkspurt_packets = 0
        self.packets = 0  # every audio packet seen, to check against the stream's own count
        self._last_arrival = 0.0
        self._in_spurt = False
        self._awaiting_onset = False
        self._pending_gaps = 0  # counted once a later speech packet shows the talkspurt still going
        self._pending_packets = 0
        self._waiter: tuple[float, asyncio.Future[float]] | None = None

    def on_packet(self, data: bytes, now: float) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:  # PCMU only: what our caller offers
            return
        self.packets += 1
        header = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= header + 4:  # RFC 3550 5.3.1 header extension
            header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
        gap = now - self._last_arrival
        self._last_arrival = now
        if data[1] & 0x80:
            self._in_spurt = self._awaiting_onset = True
            self._pending_gaps, self._pending_packets = 0, 1
        elif self._in_spurt:
            self._pending_packets += 1
            if gap >= AUDIO_GAP_S:
                self._pending_gaps += 1
        if not data[header:].translate(None, _QUIET_ULAW):
            return
        times = self.speech_times
        if self._awaiting_onset or not times or now - times[-1] >= TURN_END_SILENCE_S:
            self.onsets.append(now)
            self._awaiting_onset = False
        times.append(now)
        if self._in_spurt:
            self.gaps += self._pending_gaps
            self.talkspurt_packets += self._pending_packets
            self._pending_gaps = self._pending_packets = 0
        waiter = self._waiter
        if waiter is not None and now >= waiter[0]:
            self._waiter = None
            if not waiter[1].done():
                waiter[1].set_result(now)

    async def first_speech_after(self, moment: float, timeout: float) -> float | None:
        index = bisect.bisect_left(self.speech_times, moment)
        if index < len(self.speech_times):
            return self.speech_times[index]
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiter = (moment, future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiter = None

    def onset_between(self, start: float, end: float) -> bool:
        index = bisect.bisect_right(self.onsets, start)
        return index < len(self.onsets) and self.onsets[index] < end

    def speech_until_silence(self, start: float) -> float:
        """The last speech packet of the run that goes on from `start` with pauses under 400 ms."""
        last = start
        for at in self.speech_times[bisect.bisect_left(self.speech_times, start) :]:
            if at - last >= BARGE_IN_STOP_GAP_S:
                break
            last = at
        return last

    async def turn_end(self, since: float, call: SipCall, timeout: float) -> bool:
        """Wait until the agent has spoken after `since` and then been silent for TURN_END_SILENCE_S."""
        deadline = time.monotonic() + timeout
        while call.state != "terminated":
            now = time.monotonic()
            spoken = bool(self.speech_times) and self.speech_times[-1] >= since
            last = self.speech_times[-1] if spoken else 0.0
            if spoken and now - last >= TURN_END_SILENCE_S:
                return True
            if now >= deadline:
                return False
            wake = last + TURN_END_SILENCE_S if spoken else now + 0.1
            await asyncio.sleep(max(0.01, min(wake, deadline) - now))
        return True


def tap_packets(call: SipCall, audio: AgentAudio) -> None:
    """Route the call's incoming RTP through `audio` first.

    RtpStream has no per-packet hook, so the bound method is wrapped on this one instance; the stream then
    handles the packet exactly as before. That only sees every packet while something calls
    `datagram_received` per packet: the callers' port pool therefore uses plain asyncio endpoints (uvloop
    looks the method up per datagram), not the shared epoll reader, whose latched fast path reads the
    socket itself. `CallOutcome.tap_missed` checks the count against the stream's own.
    """
    receive = call.media.datagram_received
    monotonic = time.monotonic

    def tapped(data: bytes, addr: tuple[str, int]) -> None:
        audio.on_packet(data, monotonic())
        receive(data, addr)

    call.media.datagram_received = tapped  # type: ignore[method-assign]


# --- one call ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TurnMeasure:
    call: int
    line: int
    label: str
    latency_ms: float | None
    premature: bool
    barge_in_stop_ms: float | None = None
    at: float = 0.0  # monotonic time the caller started the line

    def as_json(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "line": self.line,
            "label": self.label,
            "latency_ms": self.latency_ms,
            "premature": self.premature,
            "barge_in_stop_ms": self.barge_in_stop_ms,
        }


@dataclass(slots=True)
class CallOutcome:
    index: int
    call_id: str | None = None  # SIP Call-ID, once set up
    said: str = ""  # the caller's lines, words only
    dropped: str | None = None  # "setup", "ended_early", "no_reply"
    dropped_at_line: str | None = None
    setup_ms: float | None = None
    turns: list[TurnMeasure] = field(default_factory=list)
    gaps: int = 0
    talkspurt_packets: int = 0
    tap_missed: int = 0  # audio packets the stream counted that the tap did not see (should be 0)


class _SentFrames:
    """When chosen speech frames of ours left, from the stream's per-frame callback."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def watch(self, *frames: int) -> None:
        self.times = dict.fromkeys(frames, 0.0)

    def __call__(self, count: int) -> None:
        if count in self.times:
            self.times[count] = time.monotonic()


async def _speak(call: SipCall, sent: _SentFrames, audio: LineAudio) -> tuple[float, float] | None:
    """Play a line; (its first speech packet's send time, the time its last speech sample was spoken),
    or None when the call ended before it was all out."""
    base = call.media.frames_played
    first = base + audio.first_sample // SAMPLES_PER_FRAME + 1
    last = base + audio.last_sample // SAMPLES_PER_FRAME + 1
    sent.watch(first, last)
    call.play(audio.pcm)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(call.wait_drained(), len(audio.pcm) / 16000 + 5)
    if not (sent.times[first] and sent.times[last]):
        return None
    return sent.times[first], sample_spoken_at(sent.times[last], audio.last_sample % SAMPLES_PER_FRAME)


async def run_call(
    ua: UserAgent,
    target: str,
    index: int,
    script: CallerScript,
    audio: dict[tuple[str, Line], LineAudio],
    *,
    reply_timeout: float,
    on_answered: Callable[[], None],
    on_ended: Callable[[], None],
) -> CallOutcome:
    """One caller through its script; `on_answered` / `on_ended` mark when it was up (for the CPU
    window)."""
    outcome = CallOutcome(index, said=" ".join(" ".join(line.parts) for line in script.lines))
    started = time.monotonic()
    try:
        call = await asyncio.wait_for(
            ua.invite(target, from_uri=f"<sip:{script.phone}@{HOST}>", peer=_peer(target)), SETUP_TIMEOUT_S
        )
    except (CallFailed, TimeoutError, OSError, ValueError):
        outcome.dropped = "setup"
        return outcome
    on_answered()
    outcome.call_id = call.call_id
    outcome.setup_ms = round((time.monotonic() - started) * 1000, 1)
    agent = AgentAudio()
    tap_packets(call, agent)
    received_before_tap = call.media.stats.packets_received  # the answer's first packets may beat us here
    sent = _SentFrames()
    call.media.on_speech_sent = sent
    try:
        await _converse(call, agent, sent, outcome, script, audio, reply_timeout)
    finally:
        outcome.gaps, outcome.talkspurt_packets = agent.gaps, agent.talkspurt_packets
        outcome.tap_missed = max(0, call.media.stats.packets_received - received_before_tap - agent.packets)
        if call.state != "terminated":
            await call.hangup()
        on_ended()
    return outcome


async def _converse(
    call: SipCall,
    agent: AgentAudio,
    sent: _SentFrames,
    outcome: CallOutcome,
    script: CallerScript,
    audio: dict[tuple[str, Line], LineAudio],
    reply_timeout: float,
) -> None:
    long_wait = reply_timeout + 60.0  # a whole reply, however long, after its first packet
    if not await agent.turn_end(0.0, call, long_wait) or call.state == "terminated":
        outcome.dropped, outcome.dropped_at_line = (
            ("ended_early" if call.state == "terminated" else "no_reply"),
            "greeting",
        )
        return
    heard = 0.0
    for number, line in enumerate(script.lines):
        if line.barge_in:
            await asyncio.sleep(max(0.0, heard + BARGE_IN_AFTER_S - time.monotonic()))
        if call.state == "terminated":
            outcome.dropped, outcome.dropped_at_line = "ended_early", line.label
            return
        spoken = await _speak(call, sent, audio[(script.voice, line)])
        if spoken is None:
            outcome.dropped, outcome.dropped_at_line = "ended_early", line.label
            return
        onset, end = spoken
        reply = await agent.first_speech_after(end, reply_timeout)
        turn = TurnMeasure(
            outcome.index,
            number,
            line.label,
            None if reply is None else round((reply - end) * 1000, 1),
            agent.onset_between(onset, end),
            at=onset,
        )
        if line.barge_in:
            turn.barge_in_stop_ms = round((agent.speech_until_silence(onset) - onset) * 1000, 1)
        outcome.turns.append(turn)
        if reply is None:
            outcome.dropped = "ended_early" if call.state == "terminated" else "no_reply"
            outcome.dropped_at_line = line.label
            return
        heard = reply
        following = script.lines[number + 1] if number + 1 < len(script.lines) else None
        if following is None or not following.barge_in:
            await agent.turn_end(heard, call, long_wait)


def _peer(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition("@")[2].partition(":")
    return host, int(port or 5060)
