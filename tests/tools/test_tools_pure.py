"""The database-free parts of the tools: slot arithmetic, spoken matching, phone numbers."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from tools.api import InvalidRequest
from tools.matching import best_match, normalise_order_number, spoken_tokens
from tools.phone import to_e164
from tools.scheduling import (
    DaySchedule,
    OpenInterval,
    candidate_starts,
    fits_opening_hours,
    peak_occupancy,
    spoken_hours_summary,
    spoken_time,
)

THURSDAY = dt.date(2026, 11, 19)


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(THURSDAY, dt.time(hour, minute))


NINE_TO_FIVE = DaySchedule(THURSDAY, (OpenInterval(dt.time(9), dt.time(17)),))


def test_candidate_starts_every_half_hour_ending_by_closing() -> None:
    starts = candidate_starts(NINE_TO_FIVE, dt.timedelta(minutes=45))
    assert starts[0] == at(9) and starts[-1] == at(16)  # 16:30 + 45 min would end after 17:00
    assert all(b - a == dt.timedelta(minutes=30) for a, b in itertools.pairwise(starts))


def test_candidate_starts_respect_not_before_split_shifts_and_closures() -> None:
    assert candidate_starts(NINE_TO_FIVE, dt.timedelta(minutes=30), not_before=at(16, 10)) == [at(16, 30)]
    split = DaySchedule(
        THURSDAY, (OpenInterval(dt.time(9), dt.time(10)), OpenInterval(dt.time(14), dt.time(15)))
    )
    assert candidate_starts(split, dt.timedelta(minutes=30)) == [at(9), at(9, 30), at(14), at(14, 30)]
    assert not fits_opening_hours(split, at(9, 30), at(10, 30))
    closed = DaySchedule(THURSDAY, NINE_TO_FIVE.intervals, closed_for="Thanksgiving")
    assert candidate_starts(closed, dt.timedelta(minutes=30)) == []
    assert not closed.is_open


def test_peak_occupancy_counts_simultaneous_jobs_not_overlapping_ones() -> None:
    back_to_back = [(at(9), at(9, 30)), (at(9, 30), at(10))]
    # Both overlap 9:00-10:00, but they never run at once: one bay suffices.
    assert peak_occupancy(back_to_back, at(9), at(10)) == 1
    stacked = [*back_to_back, (at(9, 15), at(9, 45))]
    assert peak_occupancy(stacked, at(9), at(10)) == 2
    assert peak_occupancy(stacked, at(10), at(11)) == 0


@pytest.mark.parametrize(
    ("weekly", "expected"),
    [
        (
            {d: (OpenInterval(dt.time(8), dt.time(18)),) for d in range(5)}
            | {5: (OpenInterval(dt.time(9), dt.time(13)),)},
            "Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM, closed Sunday",
        ),
        (
            {d: (OpenInterval(dt.time(7, 30), dt.time(12)),) for d in (0, 1, 3)},
            "Monday and Tuesday 7:30 AM to noon, Thursday 7:30 AM to noon, "
            "closed Wednesday, Friday, Saturday and Sunday",
        ),
        (
            {
                d: (OpenInterval(dt.time(9), dt.time(12)), OpenInterval(dt.time(13), dt.time(17)))
                for d in range(7)
            },
            "Monday to Sunday 9 AM to noon and 1 PM to 5 PM",
        ),
        ({}, "closed every day"),
    ],
)
def test_spoken_hours_summary(weekly: dict[int, tuple[OpenInterval, ...]], expected: str) -> None:
    assert spoken_hours_summary(weekly) == expected


def test_spoken_time() -> None:
    assert [spoken_time(dt.time(h, m)) for h, m in ((0, 0), (8, 0), (12, 0), (13, 0), (17, 45))] == [
        "midnight",
        "8 AM",
        "noon",
        "1 PM",
        "5:45 PM",
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "5550100002",
        "+1 555 010 0002",
        "+15550100002",
        "(555) 010-0002",
        "1-555-010-0002",
        "sip:+15550100002@pbx.example.com",
        "<sip:5550100002@10.0.0.1;user=phone>",
        "tel:+1-555-010-0002",
    ],
)
def test_phone_numbers_normalise_to_e164(raw: str) -> None:
    assert to_e164(raw) == "+15550100002"


@pytest.mark.parametrize("raw", ["anonymous", "sip:anonymous@anonymous.invalid", "555-0100", "1000", ""])
def test_incomplete_phone_numbers_are_invalid(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        to_e164(raw)


def test_spoken_tokens_turn_number_words_into_digits() -> None:
    assert spoken_tokens("twenty four f battery") == ("24", "f", "battery")
    assert spoken_tokens("synthetic oil 5W-30") == ("synthetic", "oil", "5", "w", "30")
    assert spoken_tokens("do you have any wipers") == ("wiper",)
    assert spoken_tokens("oh no") == ("oh", "no")  # "oh" is zero only beside numbers


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("A1042", "A1042"),
        ("a 1042", "A1042"),
        ("A-1042", "A1042"),
        ("a one oh four two", "A1042"),
        ("a ten forty two", "A1042"),
        ("order number b two zero seven seven", "B2077"),
        ("1042", None),
        ("hello there", None),
    ],
)
def test_normalise_order_number(spoken: str, expected: str | None) -> None:
    assert normalise_order_number(spoken) == expected


def test_best_match_needs_most_of_the_query() -> None:
    candidates = [("pads", ["front brake pads", "brake pads"]), ("fluid", ["coolant"])]
    assert best_match("brake pads please", candidates) == "pads"
    assert best_match("breaks pads", candidates) == "pads"  # a recogniser slip
    assert best_match("brake fluid", candidates) is None
    assert best_match("the", candidates) is None
