"""Speech endpointing over the caller's 8 kHz audio, one 20 ms frame at a time.

Sans-IO like the protocol code: frames go in, events come out, and time is the stream position
(frames seen x frame length), never the wall clock, so tests replay audio faster than real time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import webrtcvad

__all__ = ["Endpointer", "SpeechEnded", "SpeechStarted"]

# webrtcvad alone calls steady line noise or hum speech: it fires on the first frames of any stream and
# stays "in speech" for as long as white noise at -30 dBFS lasts. A frame therefore also has to stand out
# from the noise floor, which drops to a quieter frame at once and climbs back with a ~1 s time constant.
_SPEECH_ABOVE_FLOOR_DB: Final = 6.0
_FLOOR_RISE_PER_FRAME: Final = 0.02


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at_ms: int  # stream time of the first voiced frame of the run that confirmed speech


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    at_ms: int  # stream time at the end of the last voiced frame


class Endpointer:
    """Turns per-frame voice decisions from webrtcvad into speech start / end events.

    Speech starts after ``start_frames`` consecutive voiced frames, so a click or a breath is not a
    turn; it ends once ``hangover_ms`` of unvoiced audio follows the last voiced frame. The hangover is
    the knob the call session turns: short after a complete-sounding answer ("yes"), long while the
    caller is mid-sentence ("on Saturday at ten ... in the morning").
    """

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        start_frames: int = 3,
        hangover_ms: int = 400,
        frame_ms: int = 20,
        sample_rate: int = 8000,
    ) -> None:
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtcvad accepts 10, 20 or 30 ms frames, not {frame_ms}")
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad does not support {sample_rate} Hz")
        if start_frames < 1:
            raise ValueError("start_frames must be at least 1")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._frame_ms = frame_ms
        self._sample_rate = sample_rate
        self._frame_bytes = sample_rate * frame_ms // 1000 * 2
        self._start_frames = start_frames
        self._hangover_ms = 0
        self.set_hangover(hangover_ms)
        self._frames_seen = 0
        self._in_speech = False
        self._voiced_run = 0  # consecutive voiced frames while waiting for speech to start
        self._last_voiced_end_ms = 0
        self._noise_floor_db: float | None = None

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    def set_hangover(self, ms: int) -> None:
        """Change the silence needed to end speech; applies to the silence already counted too."""
        if ms < self._frame_ms:
            raise ValueError(f"hangover must be at least one frame ({self._frame_ms} ms), got {ms}")
        self._hangover_ms = ms

    @property
    def trailing_silence_ms(self) -> int:
        """While in speech: unvoiced audio since the last voiced frame (0 right after a voiced frame)."""
        if not self._in_speech:
            return 0
        return self._frames_seen * self._frame_ms - self._last_voiced_end_ms

    @property
    def stream_ms(self) -> int:
        """Audio seen so far (stream time at the end of the last frame)."""
        return self._frames_seen * self._frame_ms

    def process(self, frame: bytes, *, echo: bool = False) -> SpeechStarted | SpeechEnded | None:
        """One frame in, at most one event out. ``echo``: the caller's side judged this frame an echo of
        our own audio; it counts as unvoiced and can lower the noise floor, never raise it."""
        if len(frame) != self._frame_bytes:
            raise ValueError(f"expected a {self._frame_bytes}-byte frame of PCM16, got {len(frame)} bytes")
        frame_start_ms = self._frames_seen * self._frame_ms
        self._frames_seen += 1
        frame_end_ms = frame_start_ms + self._frame_ms
        energy_db = _energy_db(frame)
        if echo:
            # An echo frame says nothing of the caller's voice, but a quiet one still shows how low the line
            # goes: without it, a call whose greeting starts at once (every frame an echo candidate) would
            # take its floor from the caller's first loud word and hear nothing above it until the agent
            # stopped talking.
            self._lower_floor(energy_db)
            voiced = False
        else:
            voiced = self._stands_out(energy_db) and self._vad.is_speech(frame, self._sample_rate)

        if not self._in_speech:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self._start_frames:
                self._in_speech = True
                self._voiced_run = 0
                self._last_voiced_end_ms = frame_end_ms
                return SpeechStarted(at_ms=frame_end_ms - self._start_frames * self._frame_ms)
            return None

        if voiced:
            self._last_voiced_end_ms = frame_end_ms
            return None
        if frame_end_ms - self._last_voiced_end_ms >= self._hangover_ms:
            self._in_speech = False
            return SpeechEnded(at_ms=self._last_voiced_end_ms)
        return None

    def end_if_due(self) -> SpeechEnded | None:
        """End speech now, between frames, if the silence already counted has reached the hangover (which
        `set_hangover` may just have shortened). None, and nothing changes, otherwise."""
        if not self._in_speech or self.trailing_silence_ms < self._hangover_ms:
            return None
        self._in_speech = False
        return SpeechEnded(at_ms=self._last_voiced_end_ms)

    def _lower_floor(self, energy_db: float) -> None:
        if self._noise_floor_db is None or energy_db < self._noise_floor_db:
            self._noise_floor_db = energy_db

    def _stands_out(self, energy_db: float) -> bool:
        floor = self._noise_floor_db
        if floor is None or energy_db < floor:
            self._noise_floor_db = energy_db
            return False
        self._noise_floor_db = floor + _FLOOR_RISE_PER_FRAME * (energy_db - floor)
        return energy_db > floor + _SPEECH_ABOVE_FLOOR_DB


def _energy_db(frame: bytes) -> float:
    samples = np.frombuffer(frame, dtype="<i2").astype(np.int64)
    # Mean square by an integer dot product: exact, and a third the cost of float64 multiply-and-mean.
    return 10.0 * math.log10(float(samples @ samples) / len(samples) + 1.0)
