"""Speech-to-text with faster-whisper (CTranslate2 Whisper), the production profile's recogniser.

Whisper is not a streaming decoder: it reads a whole stretch of audio (up to a 30 s window) and writes
its transcript. Our VAD already cuts the call into utterances, so the recogniser buffers one utterance
and decodes it when the VAD closes it; Whisper's own VAD filter stays off. Partial hypotheses (for
barge-in decisions and logs) re-decode the audio so far, but only once enough new audio has arrived:
a session polling every 100 ms would otherwise pay a full decode per poll.

The model is loaded from a local CTranslate2 conversion only. faster-whisper fetches from the Hugging
Face hub when handed a model name, and fetches a tokenizer when the folder lacks ``tokenizer.json``; a
phone system must never do either mid-deployment, so both cases are configuration errors here. Every
faster-whisper / CTranslate2 / tokenizers failure leaves this module as ``agent.stt.SttError``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel  # type: ignore[import-untyped]

from agent.stt import SttError

__all__ = ["WhisperEngine", "WhisperRecognizer", "upsample_telephone"]

log = logging.getLogger(__name__)

_Audio = npt.NDArray[np.float32]

_TELEPHONE_RATE: Final = 8000
MODEL_RATE: Final = 16000
_REQUIRED_FILES: Final = ("model.bin", "tokenizer.json")
# A window's transcript is capped: on noise Whisper can loop on one phrase up to its 448-token limit,
# seconds of CPU on a shared core while the caller waits. 128 tokens is ~25 s of fast speech, longer
# than any turn a caller takes.
_MAX_NEW_TOKENS: Final = 128
_WARM_UP_SECONDS: Final = 1.0


# --- 8 kHz -> 16 kHz ----------------------------------------------------------------------------------------

# Polyphase interpolation by 2 with a Kaiser-windowed sinc: phase 0 yields the samples at the original
# instants, phase 1 the half-way points. The cut-off sits at 3.6 kHz, above the 3.4 kHz a G.711 line
# carries and below 4 kHz, so the spectral image that upsampling creates above 4 kHz is suppressed rather
# than handed to the model as fake high-frequency speech (zero-order hold or linear interpolation leave
# it in; Whisper's mel front end reaches 8 kHz and sees it).
_HALF_TAPS: Final = 16
_CUTOFF: Final = 0.9  # of the 8 kHz Nyquist frequency
_KAISER_BETA: Final = 8.0


def _phase_taps(phase: float) -> npt.NDArray[np.float64]:
    offsets = np.arange(-_HALF_TAPS, _HALF_TAPS + 1) - phase  # in 8 kHz sample periods
    span = _HALF_TAPS + 1.0
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (offsets / span) ** 2, 0.0, None)))
    taps = _CUTOFF * np.sinc(_CUTOFF * offsets) * window / np.i0(_KAISER_BETA)
    normalised: npt.NDArray[np.float64] = taps / taps.sum()  # unity gain at DC in both phases
    return normalised


_PHASES: Final = (_phase_taps(0.0), _phase_taps(0.5))


def upsample_telephone(pcm16_8k: bytes) -> _Audio:
    """8 kHz PCM16 to the float32 samples in [-1, 1) at 16 kHz that Whisper's front end expects."""
    if len(pcm16_8k) % 2:
        raise ValueError("PCM16 audio must have an even number of bytes")
    samples = np.frombuffer(pcm16_8k, dtype="<i2").astype(np.float64) / 32768.0
    if not samples.size:
        return np.zeros(0, dtype=np.float32)
    padded = np.pad(samples, _HALF_TAPS)  # silence beyond the utterance's edges
    out = np.empty(2 * samples.size, dtype=np.float32)
    for index, taps in enumerate(_PHASES):
        out[index::2] = np.correlate(padded, taps, mode="valid")
    return out


# --- The shared model and per-call recognisers --------------------------------------------------------------


class WhisperEngine:
    """A loaded Whisper model shared by every call; CTranslate2 runs ``num_workers`` decodes in parallel."""

    def __init__(
        self, model: WhisperModel, *, language: str, beam_size: int, initial_prompt: str | None
    ) -> None:
        self._model = model
        self.language = language
        self.beam_size = beam_size
        self.initial_prompt = initial_prompt

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        num_workers: int = 2,
        language: str = "en",
        beam_size: int = 1,
        initial_prompt: str | None = None,
    ) -> WhisperEngine:
        """Load a CTranslate2 Whisper conversion from ``model_dir`` (never from the network) and prove it
        decodes.

        ``cpu_threads`` is per decode and ``num_workers`` the number of decodes that run at once; the
        defaults (1 x 2) let two calls on a two-core box decode side by side instead of queueing.
        ``initial_prompt`` (e.g. the business's name and products) steers spelling towards the domain.
        A one-second warm-up decode runs here so a model that loads but cannot decode (wrong mel count,
        broken weights) fails at start-up, and the first caller does not pay CTranslate2's first-run
        allocations.
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if cpu_threads < 0 or num_workers < 1:
            raise ValueError(f"need cpu_threads >= 0 and num_workers >= 1, got {cpu_threads}, {num_workers}")
        if not model_dir.is_dir():
            raise SttError(f"whisper model directory {model_dir} does not exist (or is not a directory)")
        missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
        if missing:
            raise SttError(
                f"whisper model directory {model_dir} has no {' or '.join(missing)}; it must hold a "
                "CTranslate2 Whisper conversion with its tokenizer (models are never downloaded)"
            )
        started = time.perf_counter()
        try:
            model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers,
                local_files_only=True,
            )
            supported = list(model.supported_languages)
        except Exception as exc:  # CTranslate2 and tokenizers raise plain Exception/RuntimeError/ValueError
            raise SttError(f"faster-whisper could not load the model in {model_dir}: {exc}") from exc
        if language not in supported:
            kind = "multilingual" if len(supported) > 1 else "English-only"
            raise SttError(f"the {kind} whisper model in {model_dir} does not support language {language!r}")
        engine = cls(model, language=language, beam_size=beam_size, initial_prompt=initial_prompt)
        try:
            engine.transcribe(np.zeros(int(_WARM_UP_SECONDS * MODEL_RATE), dtype=np.float32))
        except SttError as exc:
            raise SttError(f"the whisper model in {model_dir} loads but cannot decode: {exc}") from exc
        log.info(
            "whisper model %s loaded (%s, %d thread(s) x %d worker(s)) in %.0f ms",
            model_dir,
            compute_type,
            cpu_threads,
            num_workers,
            (time.perf_counter() - started) * 1000,
        )
        return engine

    def new_recognizer(self, partial_interval_ms: int = 600) -> WhisperRecognizer:
        return WhisperRecognizer(self, partial_interval_ms=partial_interval_ms)

    def transcribe(self, audio_16k: _Audio) -> str:
        """One utterance (float32 at 16 kHz) to lower-case text. Safe to call from several threads.

        Greedy-or-beam at temperature 0 only: the temperature fallback re-decodes up to five times when
        a result looks unlikely, which multiplies worst-case latency for little gain on short turns.
        No timestamps (we need none) and no conditioning on earlier text (each utterance stands alone,
        so one misrecognition cannot propagate). The no-speech check stays on: a VAD false start on line
        noise then yields "" instead of Whisper's stock hallucinations.
        """
        try:
            segments, _info = self._model.transcribe(
                audio_16k,
                language=self.language,
                beam_size=self.beam_size,
                temperature=0.0,
                condition_on_previous_text=False,
                initial_prompt=self.initial_prompt,
                without_timestamps=True,
                vad_filter=False,
                max_new_tokens=_MAX_NEW_TOKENS,
            )
            # Lazy: decoding runs while this joins. Segment texts usually start with a space, not always.
            text = " ".join(segment.text for segment in segments)
        except Exception as exc:  # the boundary: whatever CTranslate2 raises becomes our error
            raise SttError(
                f"faster-whisper failed to decode {audio_16k.size / MODEL_RATE:.2f} s: {exc}"
            ) from exc
        return " ".join(str(text).split()).lower()


class WhisperRecognizer:
    """One call's recogniser: buffers each utterance and lets the shared engine decode it.

    Not thread-safe: the call session drives it from one worker thread at a time.
    """

    def __init__(self, engine: WhisperEngine, *, partial_interval_ms: int = 600) -> None:
        if partial_interval_ms < 0:
            raise ValueError(f"partial_interval_ms must be >= 0, got {partial_interval_ms}")
        self._engine = engine
        self._partial_interval_bytes = partial_interval_ms * _TELEPHONE_RATE // 1000 * 2
        self._audio = bytearray()
        self._in_utterance = False
        self._decoded_bytes = 0  # how much of the utterance the last partial decoded
        self._hypothesis = ""
        self._decodes = 0

    @property
    def decodes(self) -> int:
        """How often this recogniser ran the model (partials and finals): the CPU it cost, for metrics."""
        return self._decodes

    def start_utterance(self) -> None:
        if self._in_utterance:
            raise RuntimeError("start_utterance() while an utterance is open")
        self._audio.clear()
        self._decoded_bytes = 0
        self._hypothesis = ""
        self._in_utterance = True

    def feed(self, pcm16_8k: bytes) -> None:
        """Buffer more of the utterance: 16-bit little-endian mono at 8 kHz, any even length."""
        if not self._in_utterance:
            raise RuntimeError("feed() outside an utterance; call start_utterance() first")
        if len(pcm16_8k) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        self._audio += pcm16_8k

    def partial(self) -> str:
        """The hypothesis for the audio so far, re-decoded only once ``partial_interval_ms`` of new audio
        has arrived since the last decode; "" outside an utterance or with partials disabled."""
        if not self._in_utterance or not self._partial_interval_bytes:
            return ""
        if len(self._audio) - self._decoded_bytes >= self._partial_interval_bytes:
            self._hypothesis = self._decode()
            self._decoded_bytes = len(self._audio)
        return self._hypothesis

    def end_utterance(self) -> str:
        """Decode the whole utterance; "" for an empty one."""
        if not self._in_utterance:
            raise RuntimeError("end_utterance() without start_utterance()")
        self._in_utterance = False
        if not self._audio:
            return ""
        if self._decoded_bytes == len(self._audio):
            return self._hypothesis  # the last partial already decoded exactly this audio, same settings
        return self._decode()

    def transcribe(self, pcm16_8k: bytes) -> str:
        """A whole utterance at once (tests, benchmarks)."""
        self.start_utterance()
        self.feed(pcm16_8k)
        return self.end_utterance()

    def _decode(self) -> str:
        self._decodes += 1
        return self._engine.transcribe(upsample_telephone(bytes(self._audio)))
