"""The small interfaces every speech engine sits behind, so the call session never knows which one runs.

- STT: `SpeechEngine.new_recognizer()` gives one call's `StreamingRecognizer` (pocketsphinx by default,
  faster-whisper in the production profile).
- TTS: `Synthesizer` turns text into 8 kHz PCM16 (espeak-ng by default, piper in production).

Engines translate their own failures into `agent.stt.SttError` / `agent.tts.TtsError` at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable


class StreamingRecognizer(Protocol):
    """One call's recogniser. Driven from one worker thread at a time; never from the event loop."""

    def start_utterance(self) -> None:
        """Begin a stretch of caller speech (the VAD fired)."""

    def feed(self, pcm16_8k: bytes) -> None:
        """More of the utterance: 16-bit little-endian mono at 8 kHz, any even length."""

    def partial(self) -> str:
        """The best hypothesis so far, lower case; "" when nothing is recognised yet."""

    def end_utterance(self) -> str:
        """Finish the utterance and return its final transcript, lower case."""


@runtime_checkable
class EconomyRecognizer(Protocol):
    """A recogniser with a cheaper way to decode, which a speech worker that is falling behind starts new
    utterances with (agent/stt_pool.py): a turn understood slightly less well beats one answered late."""

    @property
    def economy(self) -> bool:
        """Whether the open (or last) utterance is decoded a cheaper way."""

    @property
    def economy_depth(self) -> int:
        """How the open (or last) utterance is decoded: 0 in full, 1 the cheaper way, 2 cheaper still."""

    def start_economy_utterance(self, *, deep: bool = False) -> None:
        """As `StreamingRecognizer.start_utterance`, decoding the cheaper way (`deep`: cheaper still)."""


@runtime_checkable
class AsyncRecognizer(Protocol):
    """A recogniser the event loop can drive without a thread in between (one in a worker process, reached
    over a socket). The call session prefers these methods when a recogniser has them."""

    async def start_utterance_async(self) -> None:
        """As `StreamingRecognizer.start_utterance`."""

    async def feed_async(self, pcm16_8k: bytes, *, urgent: bool = False) -> str:
        """As `StreamingRecognizer.feed`, returning the partial transcript after it; `urgent` when the
        caller is not speaking (someone is waiting on this partial)."""

    def hurry(self) -> None:
        """The caller has paused: decode what this call has waiting ahead of calls whose callers speak."""

    async def end_utterance_async(self) -> str:
        """As `StreamingRecognizer.end_utterance`."""


class SpeechEngine(Protocol):
    """A loaded model shared by all calls."""

    def new_recognizer(self) -> StreamingRecognizer:
        """A fresh recogniser for one call, ready for telephone audio."""


class Synthesizer(Protocol):
    """Text to telephone audio. Safe to call from several worker threads."""

    def stream_8k(self, text: str) -> Iterator[bytes]:
        """8 kHz PCM16 chunks as they are produced (sentence by sentence at least)."""

    def synthesize_8k(self, text: str) -> bytes:
        """The whole text as 8 kHz PCM16."""
