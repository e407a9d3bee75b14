"""Endpointing on synthesised speech, silences and noise (real webrtcvad, stream time, no clock)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from agent.tts import EspeakSynthesizer
from agent.vad import Endpointer, SpeechEnded, SpeechStarted

FRAME = 320  # 20 ms of 8 kHz PCM16


def silence(ms: int) -> bytes:
    return bytes(ms * 16)


def samples(pcm16: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


def to_pcm(values: npt.NDArray[np.float64]) -> bytes:
    return np.clip(np.rint(values), -32768, 32767).astype("<i2").tobytes()


def run(endpointer: Endpointer, audio: bytes) -> list[SpeechStarted | SpeechEnded]:
    events = []
    for offset in range(0, len(audio) - FRAME + 1, FRAME):
        event = endpointer.process(audio[offset : offset + FRAME])
        if event is not None:
            events.append(event)
    return events


def audible_span_ms(pcm16: bytes, offset_ms: float) -> tuple[float, float]:
    """Where the synthesised speech is actually audible, in stream time."""
    loud = np.nonzero(np.abs(samples(pcm16)) > 500)[0]
    return offset_ms + loud[0] / 8, offset_ms + loud[-1] / 8


@pytest.fixture(scope="module")
def two_turns() -> tuple[bytes, list[tuple[float, float]]]:
    voice = EspeakSynthesizer(variant="m3")
    first = voice.synthesize_8k("I'd like to book an oil change.")
    second = voice.synthesize_8k("Tomorrow at ten in the morning.")
    first_at = 500
    second_at = first_at + len(first) // 16 + 1200
    audio = silence(500) + first + silence(1200) + second + silence(1000)
    return audio, [audible_span_ms(first, first_at), audible_span_ms(second, second_at)]


def test_two_utterances_give_exactly_two_starts_and_two_ends(
    two_turns: tuple[bytes, list[tuple[float, float]]],
) -> None:
    audio, spans = two_turns
    events = run(Endpointer(), audio)
    assert [type(event) for event in events] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    for (start, end), started, ended in zip(spans, events[::2], events[1::2], strict=True):
        assert started.at_ms == pytest.approx(start, abs=60)
        assert ended.at_ms == pytest.approx(end, abs=150)


def test_speech_over_line_noise_is_still_found(two_turns: tuple[bytes, list[tuple[float, float]]]) -> None:
    audio, spans = two_turns
    noise = np.random.default_rng(7).standard_normal(len(audio) // 2) * 300  # about -40 dBFS
    events = run(Endpointer(), to_pcm(samples(audio) + noise))
    assert [type(event) for event in events] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    for (start, end), started, ended in zip(spans, events[::2], events[1::2], strict=True):
        assert started.at_ms == pytest.approx(start, abs=80)
        assert ended.at_ms == pytest.approx(end, abs=200)


@pytest.mark.parametrize("level", [0, 30, 300, 1000, 5000])
def test_silence_and_steady_noise_alone_give_no_events(level: float) -> None:
    noise = np.random.default_rng(3).standard_normal(8000 * 5) * level
    endpointer = Endpointer()
    assert run(endpointer, to_pcm(noise)) == []
    assert not endpointer.in_speech


def test_mains_hum_gives_no_events() -> None:
    t = np.arange(8000 * 3) / 8000
    hum = np.sin(2 * np.pi * 50 * t) * 3000 + np.sin(2 * np.pi * 150 * t) * 1000
    assert run(Endpointer(), to_pcm(hum)) == []


def test_pause_shorter_than_the_hangover_does_not_end_the_turn() -> None:
    voice = EspeakSynthesizer(variant="f2")
    audio = (
        silence(400)
        + voice.synthesize_8k("On Saturday at ten")
        + silence(300)
        + voice.synthesize_8k("in the morning.")
        + silence(800)
    )
    assert [type(e) for e in run(Endpointer(hangover_ms=700), audio)] == [SpeechStarted, SpeechEnded]
    assert [type(e) for e in run(Endpointer(hangover_ms=200), audio)] == [
        SpeechStarted,
        SpeechEnded,
        SpeechStarted,
        SpeechEnded,
    ]


def test_set_hangover_applies_to_the_silence_already_counted() -> None:
    voice = EspeakSynthesizer(variant="m3")
    endpointer = Endpointer(hangover_ms=1000)
    events = run(endpointer, silence(200) + voice.synthesize_8k("Yes.") + silence(300))
    assert [type(e) for e in events] == [SpeechStarted]
    assert endpointer.in_speech
    endpointer.set_hangover(200)  # the transcript so far ("yes") sounds complete
    ended = endpointer.process(silence(20))
    assert isinstance(ended, SpeechEnded)
    assert not endpointer.in_speech


def test_start_needs_consecutive_voiced_frames() -> None:
    voice = EspeakSynthesizer(variant="m3")
    word = voice.synthesize_8k("Yes.")
    loud = np.nonzero(np.abs(samples(word)) > 500)[0]
    click = word[loud[0] * 2 // FRAME * FRAME :][: 2 * FRAME]  # 40 ms of speech, then nothing
    assert run(Endpointer(start_frames=3), silence(400) + click + silence(600)) == []
    assert [type(e) for e in run(Endpointer(start_frames=1), silence(400) + click + silence(600))] == [
        SpeechStarted,
        SpeechEnded,
    ]


def test_speech_over_the_agent_from_the_first_frame_is_found() -> None:
    """The agent greets at once, so every frame the caller sends from the start may be our echo, and only
    the caller's loud frames pass the echo gate (agent.turn_taking.EchoGate). The quiet echo candidates
    must still set the noise floor: seeded by the caller's first loud frame instead, it kept every later
    word from standing out until the agent fell silent (the Twilio barge-in test's missing `clear`)."""
    voice = EspeakSynthesizer(variant="m3")
    speech = voice.synthesize_8k("I'd like to book an oil change.")
    audio = silence(600) + speech + silence(600)
    gate_peak = 8000  # what half the agent's loudest recent frame lets through
    endpointer = Endpointer()
    events = []
    for offset in range(0, len(audio) - FRAME + 1, FRAME):
        frame = audio[offset : offset + FRAME]
        echo = int(np.abs(samples(frame)).max()) <= gate_peak
        event = endpointer.process(frame, echo=echo)
        if event is not None:
            events.append(event)
    loud = np.nonzero(np.abs(samples(speech)) > gate_peak)[0]
    first_loud_ms = 600 + loud[0] / 8
    assert events, "no speech found over the agent"
    assert isinstance(events[0], SpeechStarted)
    assert first_loud_ms - 20 <= events[0].at_ms <= first_loud_ms + 200


def test_wrong_frame_size_is_refused() -> None:
    with pytest.raises(ValueError):
        Endpointer().process(bytes(160))
    with pytest.raises(ValueError):
        Endpointer(frame_ms=25)
    with pytest.raises(ValueError):
        Endpointer().set_hangover(0)
