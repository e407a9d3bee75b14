"""Slot arithmetic for the service bays: pure functions over times, no database, no clock.

All datetimes are naive and business-local (see crm.models).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SLOT_STEP = dt.timedelta(minutes=30)
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True, slots=True)
class OpenInterval:
    """One stretch of a weekday when the shop is open: [opens, closes)."""

    opens: dt.time
    closes: dt.time


@dataclass(frozen=True, slots=True)
class DaySchedule:
    """What is known about one day before looking at bookings."""

    day: dt.date
    intervals: tuple[OpenInterval, ...]  # empty when closed that weekday
    closed_for: str | None = None  # closure reason when the day is shut despite weekly hours

    @property
    def is_open(self) -> bool:
        return bool(self.intervals) and self.closed_for is None


def candidate_starts(
    schedule: DaySchedule, duration: dt.timedelta, *, not_before: dt.datetime | None = None
) -> list[dt.datetime]:
    """Starts every 30 minutes from opening such that the work ends by closing, at or after `not_before`."""
    if not schedule.is_open:
        return []
    starts: list[dt.datetime] = []
    for interval in schedule.intervals:
        start = dt.datetime.combine(schedule.day, interval.opens)
        closes = dt.datetime.combine(schedule.day, interval.closes)
        while start + duration <= closes:
            if not_before is None or start >= not_before:
                starts.append(start)
            start += SLOT_STEP
    return starts


def fits_opening_hours(schedule: DaySchedule, start: dt.datetime, end: dt.datetime) -> bool:
    if not schedule.is_open or start.date() != schedule.day:
        return False
    return any(
        dt.datetime.combine(schedule.day, interval.opens) <= start
        and end <= dt.datetime.combine(schedule.day, interval.closes)
        for interval in schedule.intervals
    )


def peak_occupancy(
    bookings: Iterable[tuple[dt.datetime, dt.datetime]], start: dt.datetime, end: dt.datetime
) -> int:
    """Most bookings in progress at any one instant of [start, end).

    Not simply "bookings overlapping the window": two back-to-back jobs both overlap a long window but
    share one bay. Intervals form an interval graph, whose chromatic number equals its largest clique,
    so a peak below the bay count means the bays can really be assigned.
    """
    events: list[tuple[dt.datetime, int]] = []
    for booked_start, booked_end in bookings:
        clipped_start, clipped_end = max(booked_start, start), min(booked_end, end)
        if clipped_start < clipped_end:
            events.append((clipped_start, 1))
            events.append((clipped_end, -1))
    # At equal instants, ends (-1) sort before starts (+1): a job ending at 9:30 frees its bay for 9:30.
    events.sort()
    peak = current = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def has_free_bay(
    bookings: Sequence[tuple[dt.datetime, dt.datetime]], start: dt.datetime, end: dt.datetime, bay_count: int
) -> bool:
    return peak_occupancy(bookings, start, end) < bay_count


def spoken_time(value: dt.time) -> str:
    """ "8 AM", "1 PM", "8:30 AM", "noon", "midnight": the way a receptionist says it."""
    if value.minute == 0 and value.hour == 12:
        return "noon"
    if value.minute == 0 and value.hour == 0:
        return "midnight"
    hour = value.hour % 12 or 12
    suffix = "AM" if value.hour < 12 else "PM"
    if value.minute == 0:
        return f"{hour} {suffix}"
    return f"{hour}:{value.minute:02d} {suffix}"


def _join_spoken(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _day_range(first: int, last: int) -> str:
    if first == last:
        return WEEKDAY_NAMES[first]
    if last == first + 1:
        return f"{WEEKDAY_NAMES[first]} and {WEEKDAY_NAMES[last]}"
    return f"{WEEKDAY_NAMES[first]} to {WEEKDAY_NAMES[last]}"


def spoken_hours_summary(weekly: dict[int, tuple[OpenInterval, ...]]) -> str:
    """E.g. "Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM, closed Sunday".

    Consecutive weekdays with identical hours are grouped; closed days are said last, together.
    """
    runs: list[tuple[int, int, tuple[OpenInterval, ...]]] = []
    closed: list[str] = []
    for weekday in range(7):
        intervals = tuple(sorted(weekly.get(weekday, ()), key=lambda interval: interval.opens))
        if not intervals:
            closed.append(WEEKDAY_NAMES[weekday])
            continue
        if runs and runs[-1][1] == weekday - 1 and runs[-1][2] == intervals:
            runs[-1] = (runs[-1][0], weekday, intervals)
        else:
            runs.append((weekday, weekday, intervals))
    if not runs:
        return "closed every day"
    parts = [
        _day_range(first, last)
        + " "
        + _join_spoken([f"{spoken_time(i.opens)} to {spoken_time(i.closes)}" for i in intervals])
        for first, last, intervals in runs
    ]
    if closed:
        parts.append("closed " + _join_spoken(closed))
    return ", ".join(parts)
