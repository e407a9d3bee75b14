"""The small interfaces every speech engine sits behind, so the call session never knows which one runs.

- STT: `SpeechEngine.new_recognizer()` gives one call's `StreamingRecognizer` (pocketsphinx by default,
  faster-whisper in the production profile).
- TTS: `Synthesizer` turns text into 8 kHz PCM16 (espeak-ng by default, piper in production).

Engines translate their own failures into `agent.stt.SttError` / `agent.tts.TtsError` at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


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
