"""piper synthesis end to end: piper's real loader, its espeak-ng phonemiser and onnxruntime run a tiny
voice built in tests/agent/tiny_piper.py; our resampling to 8 kHz is checked against the model's output.

Set SWITCHBOARD_TEST_PIPER_VOICE=/path/to/voice.onnx (with its .onnx.json beside it) to also check a real
voice produces speech.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime  # type: ignore[import-untyped,unused-ignore]
import pytest
from onnx import TensorProto, helper
from piper import PiperVoice, SynthesisConfig

from agent.engines import Synthesizer
from agent.tts import EspeakSynthesizer, TtsError, speakable_text
from agent.tts_piper import PiperSynthesizer
from tests.agent.tiny_piper import HOP_LENGTH, SPEAKER_STEP_HZ, TONE_HZ, build_tiny_voice

THREE_SENTENCES = "Thanks for calling Riverside Auto Care. Your car is ready! Would you like a receipt?"
# Slack for audioop.ratecv, which carries a fractional position from chunk to chunk.
RESAMPLING_SLACK = 3


def samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


def rms(pcm16: bytes) -> float:
    values = samples(pcm16)
    return float(np.sqrt(np.mean(values * values)))


def dominant_hz(pcm16: bytes, rate: int = 8000) -> float:
    values = samples(pcm16)
    spectrum = np.abs(np.fft.rfft(values * np.hanning(len(values))))
    return float(np.fft.rfftfreq(len(values), 1 / rate)[int(np.argmax(spectrum))])


def model_outputs(voice_path: Path, text: str, **options: float | int) -> list[tuple[int, int]]:
    """(phoneme ids, samples) per sentence as piper itself feeds the model and gets audio back, on the text
    our synthesiser will say."""
    voice = PiperVoice.load(voice_path)
    config = SynthesisConfig(**options)  # type: ignore[arg-type]
    return [
        (len(chunk.phoneme_ids), len(chunk.audio_float_array))
        for chunk in voice.synthesize(speakable_text(text), config)
    ]


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("piper-voices")


@pytest.fixture(scope="module")
def tiny_voice(voice_dir: Path) -> Path:
    return build_tiny_voice(voice_dir, name="tiny")


@pytest.fixture(scope="module")
def trio_voice(voice_dir: Path) -> Path:
    """Three speakers at 16 kHz (piper's "low" quality rate)."""
    return build_tiny_voice(voice_dir, name="trio", sample_rate=16000, num_speakers=3)


@pytest.fixture(scope="module")
def tiny(tiny_voice: Path) -> PiperSynthesizer:
    return PiperSynthesizer(tiny_voice)


# --- The audio ------------------------------------------------------------------------------------------


def test_one_chunk_per_sentence_each_as_long_as_the_models_output(
    tiny: PiperSynthesizer, tiny_voice: Path
) -> None:
    engine: Synthesizer = tiny  # mypy checks PiperSynthesizer against the interface here
    chunks = list(engine.stream_8k(THREE_SENTENCES))
    outputs = model_outputs(tiny_voice, THREE_SENTENCES)
    assert tiny.sample_rate == 22050
    assert len(outputs) == 3
    assert len(chunks) == 3
    for chunk, (phoneme_ids, model_samples) in zip(chunks, outputs, strict=True):
        assert model_samples == phoneme_ids * HOP_LENGTH  # the tiny model is what the tests think it is
        expected = model_samples * 8000 / tiny.sample_rate
        assert abs(len(chunk) // 2 - expected) <= RESAMPLING_SLACK
    assert tiny.synthesize_8k(THREE_SENTENCES) == b"".join(chunks)


def test_native_chunks_are_the_models_audio_as_pcm16(tiny: PiperSynthesizer, tiny_voice: Path) -> None:
    native = list(tiny.synthesize(THREE_SENTENCES))
    assert [len(chunk) // 2 for chunk in native] == [n for _, n in model_outputs(tiny_voice, THREE_SENTENCES)]
    # piper scales every sentence to full range.
    assert all(int(np.max(np.abs(samples(chunk)))) == 32767 for chunk in native)


def test_resampling_keeps_pitch_and_loudness_and_speaker_id_reaches_the_model(trio_voice: Path) -> None:
    text = "Please hold while I check the calendar."
    for speaker in (0, 2):
        synthesizer = PiperSynthesizer(trio_voice, speaker_id=speaker)
        narrow = synthesizer.synthesize_8k(text)
        wide = b"".join(synthesizer.synthesize(text))
        assert dominant_hz(narrow) == pytest.approx(TONE_HZ + SPEAKER_STEP_HZ * speaker, abs=3)
        assert dominant_hz(wide, synthesizer.sample_rate) == pytest.approx(dominant_hz(narrow), abs=3)
        assert rms(narrow) == pytest.approx(rms(wide), rel=0.05)
    # A multi-speaker voice without an explicit speaker uses its default speaker, 0.
    assert dominant_hz(PiperSynthesizer(trio_voice).synthesize_8k(text)) == pytest.approx(TONE_HZ, abs=3)


def test_length_scale_stretches_the_audio(tiny_voice: Path, tiny: PiperSynthesizer) -> None:
    slow = PiperSynthesizer(tiny_voice, length_scale=1.5)
    chunks = list(slow.stream_8k(THREE_SENTENCES))
    outputs = model_outputs(tiny_voice, THREE_SENTENCES, length_scale=1.5)
    for chunk, (phoneme_ids, model_samples) in zip(chunks, outputs, strict=True):
        assert model_samples == int(phoneme_ids * HOP_LENGTH * 1.5)
        assert abs(len(chunk) // 2 - model_samples * 8000 / slow.sample_rate) <= RESAMPLING_SLACK
    normal = tiny.synthesize_8k(THREE_SENTENCES)
    assert len(b"".join(chunks)) / len(normal) == pytest.approx(1.5, rel=0.01)


def test_text_is_made_speakable_before_piper_sees_it(tiny: PiperSynthesizer, tiny_voice: Path) -> None:
    written = "Order A1042 costs $34.99 and is ready at 10:30."
    said = "Order A 1 0 4 2 costs 34 dollars and 99 cents and is ready at 10 30."
    assert tiny.synthesize_8k(written) == tiny.synthesize_8k(said)
    # Without the rewrite piper would read something else ("A one thousand forty-two", ...).
    raw = PiperVoice.load(tiny_voice).synthesize(written)
    assert sum(len(chunk.phoneme_ids) for chunk in raw) != sum(
        n for n, _ in model_outputs(tiny_voice, written)
    )


def test_nothing_to_say_gives_no_audio(tiny: PiperSynthesizer) -> None:
    assert list(tiny.stream_8k("")) == []
    assert list(tiny.stream_8k("  <break time='1s'/> ")) == []


def test_threads_synthesising_at_once_get_exactly_their_own_audio(
    tiny: PiperSynthesizer, trio_voice: Path
) -> None:
    trio = PiperSynthesizer(trio_voice, speaker_id=1)
    jobs = [
        (tiny, "Your oil change is booked for tomorrow at ten."),
        (tiny, "We have wiper blades in stock. They are $18 a pair."),
        (trio, "Let me transfer you to a person."),
        (trio, THREE_SENTENCES),
    ]
    expected = [synthesizer.synthesize_8k(text) for synthesizer, text in jobs]
    rounds = 4
    # libespeak-ng (agent.tts) speaking alongside: piper phonemises with its own copy of espeak-ng.
    espeak = EspeakSynthesizer()
    start = threading.Barrier(len(jobs) + 1)
    results: list[list[bytes]] = [[] for _ in jobs]
    espeak_audio: list[bytes] = []
    errors: list[BaseException] = []

    def speak(index: int) -> None:
        try:
            start.wait(timeout=10)
            synthesizer, text = jobs[index]
            for _ in range(rounds):
                results[index].append(synthesizer.synthesize_8k(text))
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    def speak_espeak() -> None:
        try:
            start.wait(timeout=10)
            for _ in range(rounds):
                espeak_audio.append(espeak.synthesize_8k("Please hold while I check."))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(jobs))]
    threads.append(threading.Thread(target=speak_espeak))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for outputs, reference in zip(results, expected, strict=True):
        assert outputs == [reference] * rounds
    assert len(espeak_audio) == rounds
    assert all(rms(audio) > 1000 for audio in espeak_audio)


# --- Failures -------------------------------------------------------------------------------------------


def test_a_model_failing_mid_reply_raises_tts_error_after_the_sentences_it_managed(voice_dir: Path) -> None:
    limited = PiperSynthesizer(build_tiny_voice(voice_dir, name="limited", max_phoneme_ids=60))
    stream = limited.stream_8k(
        "Hi there. This sentence is far too long for the little model to handle in one go, sadly."
    )
    assert rms(next(stream)) > 1000
    with pytest.raises(TtsError, match=r"limited\.onnx failed: .*Gather"):
        next(stream)
    # The voice is still usable, and a reply abandoned half way (barge-in) closes without error.
    abandoned = limited.stream_8k("First one. Second one.")
    next(abandoned)
    abandoned.close()
    assert len(limited.synthesize_8k("Okay.")) > 0


def copy_voice(source: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.name
    shutil.copy(source, target)
    shutil.copy(f"{source}.json", f"{target}.json")
    return target


def edit_config(voice: Path, change: dict[str, object], remove: tuple[str, ...] = ()) -> None:
    config_path = Path(f"{voice}.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(change)
    for key in remove:
        section, _, field = key.partition(".")
        if field:
            del config[section][field]
        else:
            del config[section]
    config_path.write_text(json.dumps(config), encoding="utf-8")


def test_missing_voice_file(tmp_path: Path) -> None:
    missing = tmp_path / "en_US-nobody-medium.onnx"
    with pytest.raises(TtsError, match="does not exist") as caught:
        PiperSynthesizer(missing)
    assert str(missing) in str(caught.value)


def test_missing_config_beside_the_model(tiny_voice: Path, tmp_path: Path) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    Path(f"{voice}.json").unlink()
    with pytest.raises(TtsError, match=r"has no tiny\.onnx\.json beside it") as caught:
        PiperSynthesizer(voice)
    assert str(voice) in str(caught.value)


@pytest.mark.parametrize(
    ("change", "remove", "message"),
    [
        ({}, ("audio.sample_rate",), "needs audio.sample_rate"),
        ({"audio": {"sample_rate": "22050"}}, (), "needs audio.sample_rate"),
        ({}, ("phoneme_id_map",), "has no phoneme_id_map"),
        ({"phoneme_id_map": {"a": [14]}}, (), r"phoneme_id_map lacks ids for \^ \$ _"),
        ({}, ("espeak",), "lacks 'espeak'"),
        ({"num_speakers": 0}, (), "needs num_speakers >= 1"),
    ],
)
def test_incomplete_config(
    tiny_voice: Path, tmp_path: Path, change: dict[str, object], remove: tuple[str, ...], message: str
) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    edit_config(voice, change, remove)
    with pytest.raises(TtsError, match=message) as caught:
        PiperSynthesizer(voice)
    assert f"{voice}.json" in str(caught.value)


def test_unparsable_config(tiny_voice: Path, tmp_path: Path) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    Path(f"{voice}.json").write_text('{"audio": {"sample_rate": 22050},', encoding="utf-8")
    with pytest.raises(TtsError, match="is unreadable") as caught:
        PiperSynthesizer(voice)
    assert f"{voice}.json" in str(caught.value)


def test_file_onnxruntime_cannot_load(tiny_voice: Path, tmp_path: Path) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    voice.write_bytes(b"<html>404 Not Found</html>")  # what a failed download leaves behind
    with pytest.raises(TtsError, match="not a model onnxruntime can load") as caught:
        PiperSynthesizer(voice)
    assert str(voice) in str(caught.value)


def test_model_without_pipers_inputs(tiny_voice: Path, tmp_path: Path) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["waveform"], ["output"])],
        "not_a_voice",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(voice))
    with pytest.raises(TtsError, match="missing input, input_lengths, scales") as caught:
        PiperSynthesizer(voice)
    assert str(voice) in str(caught.value)


def test_multi_speaker_config_on_a_model_without_speaker_input(tiny_voice: Path, tmp_path: Path) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    edit_config(voice, {"num_speakers": 4})
    with pytest.raises(TtsError, match="missing sid"):
        PiperSynthesizer(voice)


@pytest.mark.parametrize(("voice_name", "speaker_id"), [("trio", 3), ("trio", -1), ("tiny", 1)])
def test_speaker_id_out_of_range(
    voice_name: str, speaker_id: int, tiny_voice: Path, trio_voice: Path
) -> None:
    voice = {"tiny": tiny_voice, "trio": trio_voice}[voice_name]
    with pytest.raises(TtsError, match=f"speaker_id {speaker_id} is out of range") as caught:
        PiperSynthesizer(voice, speaker_id=speaker_id)
    assert str(voice) in str(caught.value)


def test_espeak_voice_piper_does_not_have(tiny_voice: Path, tmp_path: Path) -> None:
    voice = copy_voice(tiny_voice, tmp_path)
    edit_config(voice, {"espeak": {"voice": "xx-nowhere"}})
    with pytest.raises(TtsError, match=r"cannot synthesise speech: .*xx-nowhere") as caught:
        PiperSynthesizer(voice)
    assert str(voice) in str(caught.value)


def test_cuda_asked_for_without_a_cuda_onnxruntime(tiny_voice: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA, so use_cuda=True is a valid configuration here")
    with pytest.raises(TtsError, match="no CUDA provider") as caught:
        PiperSynthesizer(tiny_voice, use_cuda=True)
    assert str(tiny_voice) in str(caught.value)


def test_length_scale_must_be_positive(tiny_voice: Path) -> None:
    with pytest.raises(ValueError, match="length_scale"):
        PiperSynthesizer(tiny_voice, length_scale=0.0)


# --- A real voice, when one is available ----------------------------------------------------------------


def test_a_real_voice_speaks() -> None:
    configured = os.environ.get("SWITCHBOARD_TEST_PIPER_VOICE")
    if not configured:
        pytest.skip(
            "no real piper voice: set SWITCHBOARD_TEST_PIPER_VOICE to a voice .onnx (with its .onnx.json "
            "beside it, e.g. en_US-lessac-medium from huggingface.co/rhasspy/piper-voices)"
        )
    synthesizer = PiperSynthesizer(Path(configured))
    chunks = list(synthesizer.stream_8k("Your oil change is booked for tomorrow at 10:30. See you then!"))
    assert len(chunks) == 2
    audio = b"".join(chunks)
    seconds = len(audio) / 2 / 8000
    # Eleven words and a time, at a normal speaking rate.
    assert 2.0 < seconds < 8.0
    assert rms(audio) > 1000
    # Speech has pauses between words and sentences: some 20 ms frames are far quieter than the loudest.
    frames = samples(audio)[: len(audio) // 2 // 160 * 160].reshape(-1, 160)
    frame_rms = np.sqrt(np.mean(frames * frames, axis=1))
    assert np.mean(frame_rms < 0.1 * frame_rms.max()) > 0.05
