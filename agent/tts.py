"""Text-to-speech with espeak-ng, called in-process through libespeak-ng (ctypes).

libespeak-ng keeps one global synthesiser (voice, parameters, callback), so every use goes through
``_ENGINE_LOCK``. Synthesis runs sentence by sentence: the lock is held while one sentence is rendered
(a few milliseconds) and released before its audio is yielded, so a slow consumer never blocks other
calls and the first sentence can be played while the rest of the reply is still text.
"""

from __future__ import annotations

import ctypes
import re
import threading
import warnings
from collections.abc import Generator, Iterable, Iterator
from typing import Final

import espeakng_loader
import numpy as np
import numpy.typing as npt

with warnings.catch_warnings():
    # audioop is deprecated from 3.11 on (audioop-lts replaces it on 3.13+); it is still the fastest ratecv.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "EspeakSynthesizer",
    "TelephoneDownsampler",
    "TtsError",
    "phonemes_ipa",
    "speakable_text",
    "to_telephone",
]

TELEPHONE_RATE: Final = 8000

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # report errors instead of calling exit() inside the library
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_PARAM_RATE: Final = 1
_EE_OK: Final = 0
_PHONEMES_IPA: Final = 0x02

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class TtsError(Exception):
    """The speech synthesiser could not produce audio (library missing, voice unknown, synthesis failed)."""


class _Engine:
    """The process-wide libespeak-ng instance. Only touch it while holding ``_ENGINE_LOCK``."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise TtsError(f"cannot load libespeak-ng: {exc}") from exc
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TtsError(f"espeak_Initialize failed ({rate}) with data path {data_path!r}")
        self.sample_rate: int = rate
        self._sink: list[bytes] | None = None
        # The CFUNCTYPE object must outlive the library's use of it, hence an attribute.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: bytes | None = None
        self._rate_wpm: int | None = None

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], num_samples: int, _events: int | None) -> int:
        if num_samples > 0 and self._sink is not None:
            self._sink.append(ctypes.string_at(wav, num_samples * 2))
        return 0  # 0 = keep synthesising

    def select_voice(self, voice: bytes) -> None:
        # Voice switches reload phoneme tables, so skip them when consecutive calls use the same voice.
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice) != _EE_OK:
                self._voice = None
                raise TtsError(f"espeak-ng has no voice {voice.decode()!r}")
            self._voice = voice
            self._rate_wpm = None  # a voice change resets the speaking rate

    def phonemes_ipa(self, voice: bytes, text: str) -> str:
        self.select_voice(voice)
        remaining = ctypes.c_char_p(text.encode("utf-8"))
        clauses: list[str] = []
        # espeak_TextToPhonemes consumes one clause per call and advances the pointer.
        while remaining.value:
            clause = self.lib.espeak_TextToPhonemes(ctypes.byref(remaining), _CHARS_UTF8, _PHONEMES_IPA)
            if clause is None:
                break
            clauses.append(clause.decode("utf-8"))
        return " ".join(clauses)

    def render(self, voice: bytes, rate_wpm: int, sentence: str) -> list[bytes]:
        self.select_voice(voice)
        if rate_wpm != self._rate_wpm:
            if self.lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0) != _EE_OK:
                raise TtsError(f"espeak-ng rejected rate {rate_wpm} wpm")
            self._rate_wpm = rate_wpm
        encoded = sentence.encode("utf-8") + b"\0"
        chunks: list[bytes] = []
        self._sink = chunks
        try:
            status = self.lib.espeak_Synth(
                encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            self._sink = None
        if status != _EE_OK:
            raise TtsError(f"espeak_Synth failed with status {status}")
        return chunks


_ENGINE_LOCK = threading.Lock()
_engine: _Engine | None = None


def _get_engine() -> _Engine:
    """Initialise libespeak-ng on first use; the caller holds ``_ENGINE_LOCK``."""
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def phonemes_ipa(text: str, voice: str = "en-us") -> str:
    """espeak-ng's IPA transcription of ``text`` (used to pronounce words missing from the STT lexicon)."""
    with _ENGINE_LOCK:
        return _get_engine().phonemes_ipa(voice.encode(), text)


# --- Text sanitising -------------------------------------------------------------------------------------

_CURRENCY = re.compile(r"\$\s?(\d[\d,]*)(?:\.(\d{1,2}))?")
_ORDER_NUMBER = re.compile(r"\b([A-Za-z])[- ]?(\d{3,6})\b")
_CLOCK_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_PERCENT = re.compile(r"(\d)\s?%")
_MARKUP = re.compile(r"<[^>]*>")  # stray HTML/SSML from templates; espeak would read the brackets
_UNSPEAKABLE = re.compile(r"[<>\[\]{}\\|_*#^~`]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _dollars(match: re.Match[str]) -> str:
    whole = int(match.group(1).replace(",", ""))
    cents = int((match.group(2) or "0").ljust(2, "0"))
    words = f"{whole} dollar" + ("" if whole == 1 else "s")
    if cents:
        words += f" and {cents} cent" + ("" if cents == 1 else "s")
    return words


def _clock_time(match: re.Match[str]) -> str:
    hour, minute = int(match.group(1)), int(match.group(2))
    if minute == 0:
        return f"{hour} o'clock"
    if minute < 10:
        return f"{hour} oh {minute}"
    return f"{hour} {minute}"


def speakable_text(text: str) -> str:
    """Rewrite ``text`` so espeak-ng reads it the way a person on the phone would.

    espeak reads "$49" as "dollar forty nine" and "A1042" as "A one thousand forty two"; callers expect
    "forty nine dollars" and an order number read character by character.
    """
    text = _MARKUP.sub(" ", text)
    text = _CURRENCY.sub(_dollars, text)
    text = _CLOCK_TIME.sub(_clock_time, text)
    text = _ORDER_NUMBER.sub(lambda m: " ".join([m.group(1).upper(), *m.group(2)]), text)
    text = _PERCENT.sub(r"\1 percent", text)
    text = text.replace("&", " and ")
    text = _UNSPEAKABLE.sub(" ", text)
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


# --- Resampling to the telephone band ---------------------------------------------------------------------


def _lowpass_taps(sample_rate: int, cutoff_hz: float, num_taps: int) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass FIR (Blackman window), unity gain at DC."""
    n = np.arange(num_taps) - (num_taps - 1) / 2
    taps = np.sinc(2 * cutoff_hz / sample_rate * n) * np.blackman(num_taps)
    result: npt.NDArray[np.float64] = taps / taps.sum()
    return result


class TelephoneDownsampler:
    """Stateful PCM16 resampler from a wideband rate down to 8 kHz.

    audioop.ratecv interpolates without an anti-aliasing filter, so espeak's fricative energy between
    4 and 11 kHz would fold back into the telephone band as hiss. A 3.6 kHz low-pass first keeps the
    result close to what a G.711 phone line carries. Filter history and ratecv state carry across
    chunks, so streamed output equals the whole-utterance output sample for sample.
    """

    _NUM_TAPS: Final = 63

    def __init__(self, in_rate: int, out_rate: int = TELEPHONE_RATE) -> None:
        self._in_rate = in_rate
        self._out_rate = out_rate
        self._taps = _lowpass_taps(in_rate, 0.45 * out_rate, self._NUM_TAPS)
        self._history = np.zeros(self._NUM_TAPS - 1, dtype=np.float64)
        self._ratecv_state: tuple[int, tuple[tuple[int, int], ...]] | None = None

    def process(self, pcm16: bytes) -> bytes:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
        if samples.size == 0:
            return b""
        padded = np.concatenate((self._history, samples))
        filtered = np.convolve(padded, self._taps, mode="valid")
        self._history = padded[-(self._NUM_TAPS - 1) :]
        clipped = np.clip(np.rint(filtered), -32768, 32767).astype("<i2").tobytes()
        out, self._ratecv_state = audioop.ratecv(
            clipped, 2, 1, self._in_rate, self._out_rate, self._ratecv_state
        )
        return out


def to_telephone(chunks: Iterable[bytes], sample_rate: int) -> Generator[bytes, None, None]:
    """A synthesiser's PCM16 chunks at `sample_rate`, each resampled to 8 kHz as it comes (one filter state
    across the chunks, so the stream equals the whole utterance resampled at once)."""
    downsampler = TelephoneDownsampler(sample_rate)
    for chunk in chunks:
        out = downsampler.process(chunk)
        if out:
            yield out


# --- The synthesiser --------------------------------------------------------------------------------------


class EspeakSynthesizer:
    """One voice configuration over the shared libespeak-ng engine; safe to use from several threads."""

    def __init__(self, voice: str = "en-us", rate_wpm: int = 170, variant: str | None = None) -> None:
        if not 80 <= rate_wpm <= 450:
            raise ValueError(f"rate_wpm must be within 80..450, got {rate_wpm}")
        self.voice = voice
        self.variant = variant
        self.rate_wpm = rate_wpm
        self._voice_name = (f"{voice}+{variant}" if variant else voice).encode()
        with _ENGINE_LOCK:
            engine = _get_engine()
            self.sample_rate: int = engine.sample_rate
            # Resolve the voice now so a typo fails at configuration time, not mid-call.
            engine.render(self._voice_name, rate_wpm, "")

    def synthesize(self, text: str) -> Iterator[bytes]:
        """PCM16 mono chunks at ``sample_rate`` as libespeak-ng hands them over, sentence by sentence."""
        for sentence in _sentences(speakable_text(text)):
            with _ENGINE_LOCK:
                chunks = _get_engine().render(self._voice_name, self.rate_wpm, sentence)
            yield from chunks

    def stream_8k(self, text: str) -> Iterator[bytes]:
        """Chunks of 8 kHz PCM16, resampled as they are produced."""
        return to_telephone(self.synthesize(text), self.sample_rate)

    def synthesize_8k(self, text: str) -> bytes:
        """The whole utterance as 8 kHz PCM16."""
        return b"".join(self.stream_8k(text))
