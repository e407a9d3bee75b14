"""espeak-ng synthesis through libespeak-ng: real library, real audio."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from agent.tts import EspeakSynthesizer, TelephoneDownsampler, TtsError, speakable_text

SENTENCE = "Your oil change is booked for tomorrow at ten in the morning."


def rms(pcm16: bytes) -> float:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def test_synthesis_is_audible_speech_of_plausible_length() -> None:
    synthesizer = EspeakSynthesizer()
    audio = b"".join(synthesizer.synthesize(SENTENCE))
    assert synthesizer.sample_rate == 22050
    seconds = len(audio) / 2 / synthesizer.sample_rate
    # 12 words at 170 words per minute is ~4.2 s of speech; espeak adds little padding.
    assert 2.5 < seconds < 6.0
    assert rms(audio) > 1000


def test_faster_rate_gives_shorter_audio() -> None:
    slow = EspeakSynthesizer(rate_wpm=130).synthesize_8k(SENTENCE)
    fast = EspeakSynthesizer(rate_wpm=260).synthesize_8k(SENTENCE)
    assert len(fast) < 0.7 * len(slow)


def test_telephone_audio_has_the_same_duration_at_8_khz() -> None:
    synthesizer = EspeakSynthesizer()
    native = b"".join(synthesizer.synthesize(SENTENCE))
    narrow = synthesizer.synthesize_8k(SENTENCE)
    assert len(narrow) / 2 / 8000 == pytest.approx(len(native) / 2 / synthesizer.sample_rate, abs=0.01)
    assert rms(narrow) > 1000


def envelope(pcm16: bytes) -> npt.NDArray[np.float64]:
    """RMS per 20 ms at 8 kHz: what was said and when, without the waveform's fine detail."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    result: npt.NDArray[np.float64] = np.sqrt(np.mean(frames * frames, axis=1))
    return result


def same_utterance(first: bytes, second: bytes) -> bool:
    """espeak-ng carries glottal phase from one utterance into the next, so renditions of the same text
    differ by a few samples; they must still have the same length and loudness contour."""
    a, b = envelope(first), envelope(second)
    if abs(len(a) - len(b)) > 2:
        return False
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1]) > 0.95


def median_pitch_hz(pcm16: bytes) -> float:
    """Median fundamental frequency over loud 40 ms frames, by autocorrelation."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    shortest, longest = 8000 // 400, 8000 // 70
    pitches = []
    for start in range(0, len(samples) - 320, 160):
        frame = samples[start : start + 320] - samples[start : start + 320].mean()
        if np.sqrt(np.mean(frame * frame)) < 1000:
            continue
        correlation = np.correlate(frame, frame, "full")[319:]
        lag = shortest + int(np.argmax(correlation[shortest:longest]))
        if correlation[lag] > 0.3 * correlation[0]:
            pitches.append(8000 / lag)
    return float(np.median(pitches))


def test_streamed_chunks_concatenate_to_the_whole_utterance() -> None:
    synthesizer = EspeakSynthesizer(variant="m3")
    text = "Thanks for calling. We are open until six tonight. Is there anything else?"
    chunks = list(synthesizer.stream_8k(text))
    assert len(chunks) > 3
    assert same_utterance(b"".join(chunks), synthesizer.synthesize_8k(text))


def test_downsampler_output_does_not_depend_on_chunking() -> None:
    native = b"".join(EspeakSynthesizer().synthesize(SENTENCE))
    whole = TelephoneDownsampler(22050).process(native)
    chunked = TelephoneDownsampler(22050)
    sizes = [2, 882, 1000, 2162, 4410]  # odd split points included, all whole samples
    pieces, offset, index = [], 0, 0
    while offset < len(native):
        size = sizes[index % len(sizes)]
        pieces.append(chunked.process(native[offset : offset + size]))
        offset, index = offset + size, index + 1
    assert b"".join(pieces) == whole


def test_downsampler_removes_what_would_alias_into_the_phone_band() -> None:
    t = np.arange(22050) / 22050
    tone_6k = (np.sin(2 * np.pi * 6000 * t) * 10000).astype("<i2").tobytes()  # would fold to 2 kHz
    tone_1k = (np.sin(2 * np.pi * 1000 * t) * 10000).astype("<i2").tobytes()
    assert rms(TelephoneDownsampler(22050).process(tone_6k)) < 0.02 * rms(tone_6k)
    assert rms(TelephoneDownsampler(22050).process(tone_1k)) == pytest.approx(rms(tone_1k), rel=0.05)


def test_variant_changes_the_voice() -> None:
    male = EspeakSynthesizer(variant="m3").synthesize_8k(SENTENCE)
    female = EspeakSynthesizer(variant="f2").synthesize_8k(SENTENCE)
    assert 80 < median_pitch_hz(male) < 130
    assert 170 < median_pitch_hz(female) < 240


def test_two_threads_synthesising_at_once_get_their_own_audio() -> None:
    texts = {"m3": "Please hold while I check the calendar.", "f2": "Your order shipped on Monday."}
    expected = {
        variant: EspeakSynthesizer(variant=variant).synthesize_8k(text) for variant, text in texts.items()
    }
    results: dict[str, list[bytes]] = {variant: [] for variant in texts}
    errors: list[BaseException] = []

    def speak(variant: str) -> None:
        try:
            synthesizer = EspeakSynthesizer(variant=variant)
            for _ in range(15):
                results[variant].append(synthesizer.synthesize_8k(texts[variant]))
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=speak, args=(variant,)) for variant in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for variant, outputs in results.items():
        assert len(outputs) == 15
        assert all(same_utterance(output, expected[variant]) for output in outputs)
        pitch = median_pitch_hz(expected[variant])
        assert all(median_pitch_hz(output) == pytest.approx(pitch, rel=0.1) for output in outputs)


def test_unknown_voice_is_reported_as_a_tts_error() -> None:
    with pytest.raises(TtsError):
        EspeakSynthesizer(voice="xx-nowhere")


def test_rate_outside_espeaks_range_is_refused() -> None:
    with pytest.raises(ValueError):
        EspeakSynthesizer(rate_wpm=20)


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("That's $49 in total.", "That's 49 dollars in total."),
        ("Wipers are $1.50 each.", "Wipers are 1 dollar and 50 cents each."),
        ("Synthetic oil is $34.99.", "Synthetic oil is 34 dollars and 99 cents."),
        ("Order A1042 has shipped.", "Order A 1 0 4 2 has shipped."),
        ("See you at 10:30 or 9:00 or 2:05.", "See you at 10 30 or 9 o'clock or 2 oh 5."),
        ("5% off <b>brakes</b> & tires", "5 percent off brakes and tires"),
    ],
)
def test_text_is_rewritten_the_way_it_is_said(text: str, spoken: str) -> None:
    assert speakable_text(text) == spoken
