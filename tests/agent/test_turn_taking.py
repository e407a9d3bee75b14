"""The turn-taking decisions the session makes from words and levels (the live behaviour is in
tests/e2e/test_turn_taking.py)."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest

from agent.turn_taking import (
    Completeness,
    EchoGate,
    HangoverPolicy,
    RecognitionFeed,
    frame_peak,
    heard_text,
    is_backchannel,
    trim_leading_silence,
    turn_completeness,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", Completeness.COMPLETE),
        ("no thanks", Completeness.COMPLETE),
        ("i'd like to book an oil change", Completeness.COMPLETE),
        ("on saturday at ten in the morning", Completeness.COMPLETE),
        ("next tuesday at two thirty in the afternoon", Completeness.COMPLETE),
        ("at ten am", Completeness.COMPLETE),
        ("my name is dana whitfield", Completeness.COMPLETE),
        ("order a one zero four two", Completeness.COMPLETE),
        ("what are your opening hours", Completeness.COMPLETE),
        ("on saturday at ten", Completeness.BARE_TIME),
        ("tomorrow at 10", Completeness.BARE_TIME),
        ("next tuesday at two thirty", Completeness.BARE_TIME),  # "... in the afternoon" may follow
        ("on monday at eight oclock", Completeness.BARE_TIME),
        ("at half past eight", Completeness.BARE_TIME),
        ("friday at nine forty five", Completeness.BARE_TIME),
        ("on the eighth", Completeness.BARE_TIME),
        ("on the twenty first", Completeness.BARE_TIME),
        ("i'm calling about my order", Completeness.SLOT_PENDING),
        ("i'd like to book a", Completeness.UNFINISHED),
        ("i'd like to book", Completeness.UNFINISHED),
        ("can i get my brakes checked on", Completeness.UNFINISHED),
        ("um", Completeness.UNFINISHED),
        ("my name is", Completeness.UNFINISHED),
        ("", Completeness.UNFINISHED),
        ("purple elephant", Completeness.LIKELY),
    ],
)
def test_completeness_of_what_the_caller_said_so_far(text: str, expected: Completeness) -> None:
    assert turn_completeness(text) is expected


def test_hangovers_grow_with_how_unfinished_the_turn_sounds() -> None:
    policy = HangoverPolicy()
    order = [
        Completeness.COMPLETE,
        Completeness.LIKELY,
        Completeness.BARE_TIME,
        Completeness.UNFINISHED,
    ]
    hangovers = [policy.hangover_ms(c) for c in order]
    assert hangovers == sorted(hangovers) and len(set(hangovers)) == len(hangovers)
    # A natural mid-sentence pause (~0.5 s) must not end a turn that sounds unfinished.
    assert policy.hangover_ms(Completeness.BARE_TIME) > 600
    assert policy.hangover_ms(Completeness.SLOT_PENDING) > 600


@pytest.mark.parametrize("text", ["mm hmm", "okay", "uh-huh", "right", "yeah", "I see", "ok sure"])
def test_backchannels(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize(
    "text", ["", "stop", "can i talk to a person", "no wait", "okay but what about tuesday"]
)
def test_not_backchannels(text: str) -> None:
    assert not is_backchannel(text)


def _tone(amplitude: int, samples: int = 160) -> bytes:
    return array.array("h", (int(amplitude * math.sin(i / 3)) for i in range(samples))).tobytes()


def test_echo_gate_tells_echo_from_the_caller_talking_over_us() -> None:
    gate = EchoGate(window_frames=4)
    assert not gate.is_echo(_tone(3000))  # nothing sent: any sound is the caller's
    gate.far_frame(20000)
    assert gate.is_echo(_tone(8000))  # -8 dB of what we just sent: echo
    assert not gate.is_echo(_tone(15000))  # louder than any echo could be: the caller
    for _ in range(4):
        gate.far_frame(0)  # our audio stopped; the echo window passes
    assert not gate.is_echo(_tone(8000))


def test_heard_text_keeps_whole_clauses_and_the_heard_share_of_the_cut_one() -> None:
    clauses = [("We're open Monday to Friday.", 100), ("Saturday nine to one, closed Sunday.", 120)]
    assert heard_text(clauses, 0) == ""
    assert heard_text(clauses, 100) == "We're open Monday to Friday."
    assert heard_text(clauses, 160) == "We're open Monday to Friday. Saturday nine to ..."
    assert heard_text(clauses, 500) == "We're open Monday to Friday. Saturday nine to one, closed Sunday."


def test_trim_leading_silence_keeps_the_onset() -> None:
    quiet = bytes(800)  # 50 ms of silence
    speech = _tone(9000, 800)
    trimmed = trim_leading_silence(quiet + speech)
    assert len(trimmed) < len(speech) + 64 and trimmed.endswith(speech)
    assert trim_leading_silence(quiet) == quiet  # all quiet: nothing to trim to


@pytest.mark.parametrize(
    "samples",
    [[0, 0, 0], [1, -2, 3], [-32768, 5, 7], [32767, -32767], list(range(-200, 200, 3))],
)
def test_frame_peak_is_the_largest_magnitude(samples: list[int]) -> None:
    pcm = np.array(samples, dtype="<i2").tobytes()
    assert frame_peak(pcm) == max(abs(sample) for sample in samples)
    assert frame_peak(pcm + b"\x7f") == frame_peak(pcm)  # a stray odd byte is not a sample
    assert frame_peak(b"") == 0


def _frame(index: int) -> bytes:
    return index.to_bytes(4, "big") * 80  # a distinct 20 ms frame (320 bytes)


def test_recognition_feed_decodes_a_short_lead_in_the_speech_and_only_the_start_of_a_pause() -> None:
    feed = RecognitionFeed(lead_in_frames=3, pause_decoded_ms=60, resume_lead_frames=2)
    decoded: list[bytes] = []
    for index in range(10):  # silence before the caller speaks
        feed.before_speech(_frame(index))
    decoded += feed.speech_started(_frame(10))
    assert decoded == [_frame(7), _frame(8), _frame(9), _frame(10)]
    decoded += feed.in_speech(_frame(11), 0)
    for index, silence_ms in zip(range(12, 20), range(20, 180, 20), strict=True):  # a 160 ms pause
        decoded += feed.in_speech(_frame(index), silence_ms)
    assert decoded[-4:] == [_frame(11), _frame(12), _frame(13), _frame(14)]  # up to 60 ms of it
    resumed = feed.in_speech(_frame(20), 0)
    assert resumed == [_frame(18), _frame(19), _frame(20)]  # with the last 40 ms of the pause
    assert feed.speech_ended(_frame(21), 20) == [_frame(21)]


def test_recognition_feed_drops_a_long_hangover_and_a_pause_the_caller_never_ends() -> None:
    feed = RecognitionFeed(lead_in_frames=2, pause_decoded_ms=40, resume_lead_frames=3)
    assert feed.speech_started(_frame(0)) == [_frame(0)]  # nothing before: no lead-in
    assert feed.in_speech(_frame(1), 60) == []
    assert feed.speech_ended(_frame(2), 80) == []
    # The held end of that pause does not leak into the next turn.
    feed.before_speech(_frame(3))
    assert feed.speech_started(_frame(4)) == [_frame(3), _frame(4)]
    assert feed.in_speech(_frame(5), 0) == [_frame(5)]


def test_recognition_feed_keeps_the_longer_lead_in_for_a_turn_started_over_the_agent() -> None:
    feed = RecognitionFeed(lead_in_frames=2, over_agent_lead_in_frames=4)
    for index in range(10):
        feed.before_speech(_frame(index))
    assert feed.speech_started(_frame(10), over_agent=True) == [_frame(i) for i in range(6, 11)]
    for index in range(11, 20):
        feed.before_speech(_frame(index))
    assert feed.speech_started(_frame(20)) == [_frame(18), _frame(19), _frame(20)]
    # No lead-in at all, when asked for none.
    none = RecognitionFeed(lead_in_frames=0, over_agent_lead_in_frames=0)
    none.before_speech(_frame(0))
    assert none.speech_started(_frame(1), over_agent=True) == [_frame(1)]


def test_echo_gate_knows_when_our_audio_went_out_within_its_window() -> None:
    gate = EchoGate(window_frames=3)
    active = [gate.far_end_active]
    for peak in (9000, 0, 0, 0):
        gate.far_frame(peak)
        active.append(gate.far_end_active)
    assert active == [False, True, True, True, False]  # out of the three-frame window at the last


def test_recognition_feed_rejects_negative_sizes() -> None:
    with pytest.raises(ValueError, match="negative"):
        RecognitionFeed(pause_decoded_ms=-20)
