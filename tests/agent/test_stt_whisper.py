"""The faster-whisper engine on a tiny random-weight Whisper model built offline (see tiny_whisper.py).

The model is real CTranslate2 Whisper with meaningless weights, so these tests run the real loading and
decoding code; what they check is our plumbing (resampling, buffering, options, partial throttling, error
translation, threads), by comparing with what faster-whisper itself returns for the same 16 kHz audio.
Recognition quality needs a trained model and belongs in a benchmark.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from faster_whisper import WhisperModel  # type: ignore[import-untyped]

from agent.engines import SpeechEngine, StreamingRecognizer
from agent.stt import SttError
from agent.stt_whisper import MODEL_RATE, WhisperEngine, WhisperRecognizer, upsample_telephone
from agent.tts import EspeakSynthesizer

from .conftest import phone_line
from .tiny_whisper import build_tiny_whisper

UTTERANCES = ("i'd like to book an oil change", "yes", "cancel my booking for friday")
CHUNK = 800  # 100 ms at 8 kHz, 16-bit


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(tiny_model_dir)


@pytest.fixture(scope="session")
def reference_transcribe(tiny_model_dir: Path) -> Callable[[bytes], str]:
    """faster-whisper used directly, with the decoding options the engine promises, on our 16 kHz audio."""
    model = WhisperModel(str(tiny_model_dir), device="cpu", compute_type="int8", cpu_threads=1)

    def transcribe(pcm16_8k: bytes) -> str:
        segments, _ = model.transcribe(
            upsample_telephone(pcm16_8k),
            language="en",
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            max_new_tokens=128,
        )
        return " ".join(" ".join(segment.text for segment in segments).split()).lower()

    return transcribe


@pytest.fixture(scope="module")
def phone_audio(voices: dict[str, EspeakSynthesizer]) -> list[bytes]:
    return [phone_line(text, voices["m3"]) for text in UTTERANCES]


# --- 8 kHz -> 16 kHz ----------------------------------------------------------------------------------------


def _tone_8k(frequency: float, seconds: float = 0.5) -> bytes:
    n = np.arange(int(8000 * seconds))
    return np.round(16000 * np.sin(2 * np.pi * frequency * n / 8000)).astype("<i2").tobytes()


@pytest.mark.parametrize("frequency", [300.0, 1000.0, 3000.0])
def test_upsampling_reproduces_tones_in_the_phone_band(frequency: float) -> None:
    upsampled = upsample_telephone(_tone_8k(frequency))
    assert upsampled.dtype == np.float32 and upsampled.size == 8000
    n = np.arange(upsampled.size)
    exact = 16000 / 32768 * np.sin(2 * np.pi * frequency * n / MODEL_RATE)
    interior = slice(100, -100)  # the filter sees silence beyond the clip's edges
    assert np.max(np.abs(upsampled - exact)[interior]) < 1e-3  # linear interpolation: ~0.1 at 3 kHz


@pytest.mark.parametrize("frequency", [1000.0, 3000.0])
def test_upsampling_leaves_no_image_above_the_phone_band(frequency: float) -> None:
    upsampled = upsample_telephone(_tone_8k(frequency))[100:-100]
    power = np.abs(np.fft.rfft(upsampled * np.hanning(upsampled.size))) ** 2
    above = power[np.fft.rfftfreq(upsampled.size, 1 / MODEL_RATE) > 4400].sum()
    assert (
        10 * np.log10(above / power.sum()) < -60
    )  # the 8 kHz - f image; linear interpolation: -8 dB at 3 kHz


def test_upsampling_edge_cases() -> None:
    assert upsample_telephone(b"").size == 0
    with pytest.raises(ValueError, match="even"):
        upsample_telephone(b"\x00\x01\x02")


# --- Loading ------------------------------------------------------------------------------------------------


def test_missing_model_directory_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(SttError, match=f"{missing}.*does not exist"):
        WhisperEngine.load(missing)


@pytest.mark.parametrize("removed", ["model.bin", "tokenizer.json"])
def test_incomplete_model_directory_is_reported(tiny_model_dir: Path, tmp_path: Path, removed: str) -> None:
    incomplete = tmp_path / "model"
    shutil.copytree(tiny_model_dir, incomplete)
    (incomplete / removed).unlink()
    # Without tokenizer.json faster-whisper would fetch one from the hub; we refuse instead.
    with pytest.raises(SttError, match=f"{incomplete} has no {removed}"):
        WhisperEngine.load(incomplete)


def test_corrupt_model_bin_is_an_stt_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "model"
    shutil.copytree(tiny_model_dir, corrupt)
    intact = (corrupt / "model.bin").read_bytes()
    (corrupt / "model.bin").write_bytes(intact[: len(intact) // 3])
    with pytest.raises(SttError, match="could not load the model") as caught:
        WhisperEngine.load(corrupt)
    assert caught.value.__cause__ is not None  # the engine's own error is kept for the log


def test_a_model_that_loads_but_cannot_decode_fails_at_load(tmp_path: Path) -> None:
    # Its first convolution expects 128 mel bins; the front end computes 80. CTranslate2 only notices
    # when it decodes, which the warm-up at load does.
    mismatched = build_tiny_whisper(tmp_path / "model", mel_bins=128)
    with pytest.raises(SttError, match=f"{mismatched} loads but cannot decode.*shape"):
        WhisperEngine.load(mismatched)


def test_unsupported_language_is_a_configuration_error(tiny_model_dir: Path) -> None:
    with pytest.raises(SttError, match=r"English-only.*'de'"):
        WhisperEngine.load(tiny_model_dir, language="de")


# --- Recognising --------------------------------------------------------------------------------------------


def test_engine_and_recognizer_implement_the_interfaces(engine: WhisperEngine) -> None:
    speech_engine: SpeechEngine = engine
    recognizer: StreamingRecognizer = speech_engine.new_recognizer()
    assert isinstance(recognizer, WhisperRecognizer)


def test_utterances_decode_as_faster_whisper_decodes_them(
    engine: WhisperEngine, reference_transcribe: Callable[[bytes], str], phone_audio: list[bytes]
) -> None:
    recognizer = engine.new_recognizer()
    results = []
    for pcm in phone_audio:  # one recogniser across utterances, as in a call
        recognizer.start_utterance()
        for start in range(0, len(pcm), 320):  # 20 ms RTP frames
            recognizer.feed(pcm[start : start + 320])
        results.append(recognizer.end_utterance())
    assert results == [reference_transcribe(pcm) for pcm in phone_audio]
    for text in results:
        assert text == text.strip().lower()
    assert len(set(results)) > 1  # the random model still hears different audio differently
    assert recognizer.decodes == len(phone_audio)


def test_empty_utterance_is_empty_without_decoding(engine: WhisperEngine) -> None:
    recognizer = engine.new_recognizer()
    recognizer.start_utterance()
    assert recognizer.partial() == ""
    assert recognizer.end_utterance() == ""
    assert recognizer.decodes == 0


def test_partials_decode_once_per_interval_of_new_audio(
    engine: WhisperEngine, reference_transcribe: Callable[[bytes], str], phone_audio: list[bytes]
) -> None:
    pcm = phone_audio[0]
    recognizer = WhisperRecognizer(engine, partial_interval_ms=600)
    recognizer.start_utterance()
    decoded_at: dict[int, str] = {}
    for start in range(0, len(pcm) - len(pcm) % CHUNK, CHUNK):  # a session polling every 100 ms
        recognizer.feed(pcm[start : start + CHUNK])
        before = recognizer.decodes
        hypothesis = recognizer.partial()
        if recognizer.decodes > before:
            decoded_at[start + CHUNK] = hypothesis
        elif decoded_at:
            assert hypothesis == decoded_at[max(decoded_at)]  # between decodes: the cached hypothesis
    fed_ms = (len(pcm) - len(pcm) % CHUNK) // 16
    assert list(decoded_at) == [ms * 16 for ms in range(600, fed_ms + 1, 600)]
    assert recognizer.decodes == fed_ms // 600
    for length, hypothesis in decoded_at.items():
        assert hypothesis == reference_transcribe(pcm[:length])  # the audio so far, not a window of it

    recognizer.feed(pcm[len(pcm) - len(pcm) % CHUNK :])
    assert recognizer.end_utterance() == reference_transcribe(pcm)
    assert recognizer.decodes == fed_ms // 600 + 1


def test_final_reuses_a_partial_that_covered_all_the_audio(
    engine: WhisperEngine, reference_transcribe: Callable[[bytes], str], phone_audio: list[bytes]
) -> None:
    pcm = phone_audio[1][: 6 * CHUNK]
    recognizer = WhisperRecognizer(engine, partial_interval_ms=300)
    recognizer.start_utterance()
    recognizer.feed(pcm)
    hypothesis = recognizer.partial()
    assert recognizer.end_utterance() == hypothesis == reference_transcribe(pcm)
    assert recognizer.decodes == 1


def test_partials_can_be_disabled(engine: WhisperEngine, phone_audio: list[bytes]) -> None:
    recognizer = WhisperRecognizer(engine, partial_interval_ms=0)
    recognizer.start_utterance()
    recognizer.feed(phone_audio[1])
    assert recognizer.partial() == ""
    assert recognizer.decodes == 0
    recognizer.end_utterance()
    assert recognizer.decodes == 1


def test_misuse_raises_like_the_pocketsphinx_recognizer(engine: WhisperEngine) -> None:
    recognizer = engine.new_recognizer()
    assert recognizer.partial() == ""
    with pytest.raises(RuntimeError, match="outside an utterance"):
        recognizer.feed(b"\x00\x00")
    with pytest.raises(RuntimeError, match="without start_utterance"):
        recognizer.end_utterance()
    recognizer.start_utterance()
    with pytest.raises(RuntimeError, match="while an utterance is open"):
        recognizer.start_utterance()
    with pytest.raises(ValueError, match="even number of bytes"):
        recognizer.feed(b"\x00")
    with pytest.raises(ValueError, match="partial_interval_ms"):
        WhisperRecognizer(engine, partial_interval_ms=-1)


def test_recognizers_on_two_threads_share_the_model(
    engine: WhisperEngine, reference_transcribe: Callable[[bytes], str], phone_audio: list[bytes]
) -> None:
    expected = [reference_transcribe(pcm) for pcm in phone_audio]
    start_together = threading.Barrier(2)

    def call(order: list[bytes]) -> list[str]:
        recognizer = engine.new_recognizer()
        start_together.wait(timeout=10)
        return [recognizer.transcribe(pcm) for pcm in order]

    with ThreadPoolExecutor(max_workers=2) as pool:
        forward = pool.submit(call, phone_audio)
        backward = pool.submit(call, phone_audio[::-1])
        assert forward.result(timeout=60) == expected
        assert backward.result(timeout=60) == expected[::-1]
