"""Spoken forms of numbers, dates, times and prices, in both directions.

Reading: a recogniser writes "november twenty fourth", "ten thirty", "half past two", "two oh seven
seven"; the functions here turn token lists (already normalised by `agent.nlu.normalise`) into values.
Writing: replies are synthesised, so dates, times and prices are written the way a person says them
("Tuesday, November 24", "10:30 AM", "$49").
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

PartOfDay = Literal["morning", "afternoon", "evening"]

# --- spoken numbers ------------------------------------------------------------------------------

_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50}
_DIGIT_TENS = {**_TENS, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_ORDINAL_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9,
}  # fmt: skip
_ORDINAL_TEENS = {
    "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15,
    "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
# Homophones a recogniser writes for digits; only trusted after another number word ("twenty for").
_DIGIT_HOMOPHONES = {"for": 4, "to": 2, "too": 2, "won": 1, "ate": 8}
_ZERO = frozenset({"zero", "oh", "o"})


def read_cardinal(tokens: list[str], i: int) -> tuple[int, int] | None:
    """A number 1-59 (or any digit string) at tokens[i]: (value, index after it)."""
    if i >= len(tokens):
        return None
    token = tokens[i]
    if token.isdigit():
        return int(token), i + 1
    if token in _TENS:
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        unit = _UNITS.get(nxt) or _DIGIT_HOMOPHONES.get(nxt)
        return (_TENS[token] + unit, i + 2) if unit else (_TENS[token], i + 1)
    value = _TEENS.get(token) or _UNITS.get(token)
    return (value, i + 1) if value else None


def read_ordinal(tokens: list[str], i: int) -> tuple[int, int] | None:
    """A day-of-month ordinal at tokens[i]: "24th", "fourth", "twenty fourth"."""
    if i >= len(tokens):
        return None
    token = tokens[i]
    if m := re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)", token):
        return int(m.group(1)), i + 1
    if token in _TENS and i + 1 < len(tokens) and tokens[i + 1] in _ORDINAL_UNITS:
        return _TENS[token] + _ORDINAL_UNITS[tokens[i + 1]], i + 2
    value = _ORDINAL_TEENS.get(token) or _ORDINAL_UNITS.get(token)
    return (value, i + 1) if value else None


def read_digit_string(tokens: list[str], i: int) -> tuple[str, int]:
    """Digits spoken one by one or in pairs: "one zero four two", "ten forty two", "two oh seven seven",
    "double seven". Returns the digits read (possibly "") and the index after them."""
    digits = ""
    while i < len(tokens):
        token = tokens[i]
        if token.isdigit():
            digits += token
        elif token in _ZERO:
            digits += "0"
        elif token in _UNITS or (digits and token in _DIGIT_HOMOPHONES):
            digits += str(_UNITS.get(token) or _DIGIT_HOMOPHONES[token])
        elif token in _TEENS:
            digits += str(_TEENS[token])
        elif token in _DIGIT_TENS:
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            unit = _UNITS.get(nxt) or _DIGIT_HOMOPHONES.get(nxt)
            digits += str(_DIGIT_TENS[token] + (unit or 0))
            i += 1 if unit else 0
        elif token in ("double", "triple") and i + 1 < len(tokens) and tokens[i + 1] in _UNITS:
            digits += str(_UNITS[tokens[i + 1]]) * (2 if token == "double" else 3)
            i += 1
        else:
            break
        i += 1
    return digits, i


# --- dates ---------------------------------------------------------------------------------------

_WEEKDAYS = {
    "monday": 0, "tuesday": 1, "tues": 1, "wednesday": 2, "wednes": 2, "thursday": 3, "thurs": 3,
    "friday": 4, "saturday": 5, "sunday": 6,
}  # fmt: skip
_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "april": 4, "may": 5, "june": 6,
    "july": 7, "august": 8, "aug": 8, "september": 9, "sept": 9, "october": 10, "oct": 10, "november": 11,
    "nov": 11, "december": 12, "dec": 12,
}  # fmt: skip
# "the first one" picks an option, it is not the 1st of the month.
_NOT_AFTER_ORDINAL = frozenset({"one", "option", "time", "available", "thing", "slot", "appointment"})


@dataclass(frozen=True, slots=True)
class DateMatch:
    date: dt.date
    start: int  # token span, so the time parser does not reread "twenty fourth" as a time
    end: int


def _safe_date(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _month_day(month: int, day: int, today: dt.date) -> dt.date | None:
    """A month and day without a year: the next such date from today (a caller never books the past)."""
    date = _safe_date(today.year, month, day)
    if date is not None and date < today:
        date = _safe_date(today.year + 1, month, day)
    return date


def _day_of_month(day: int, today: dt.date) -> dt.date | None:
    """ "The 24th": this month if still to come, else next month."""
    if day >= today.day:
        return _safe_date(today.year, today.month, day)
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return _safe_date(year, month, day)


def _month_after(tokens: list[str], j: int) -> tuple[int, int] | None:
    """An optional "of" then a month name at tokens[j]."""
    if j < len(tokens) and tokens[j] == "of":
        j += 1
    if j < len(tokens) and tokens[j] in _MONTHS:
        return _MONTHS[tokens[j]], j + 1
    return None


def _explicit_day(tokens: list[str], i: int, today: dt.date) -> DateMatch | None:
    """A calendar date starting at tokens[i]: "november twenty fourth", "the 24th", "24th of november",
    "11/24", "2026-11-24"."""
    token = tokens[i]
    if m := re.fullmatch(r"(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?", token):
        month, day = int(m.group(1)), int(m.group(2))
        if m.group(3):
            year = int(m.group(3)) + (2000 if len(m.group(3)) == 2 else 0)
            date = _safe_date(year, month, day)
        else:
            date = _month_day(month, day, today)
        return DateMatch(date, i, i + 1) if date else None
    if token in _MONTHS:
        j = i + 2 if i + 1 < len(tokens) and tokens[i + 1] == "the" else i + 1
        read = read_ordinal(tokens, j) or read_cardinal(tokens, j)
        if read and 1 <= read[0] <= 31:
            date = _month_day(_MONTHS[token], read[0], today)
            return DateMatch(date, i, read[1]) if date else None
        return None
    start = i
    if token == "the":
        i += 1
    read = read_ordinal(tokens, i)
    if read is None or not 1 <= read[0] <= 31:
        return None
    day, end = read
    if end < len(tokens) and tokens[end] in _NOT_AFTER_ORDINAL:
        return None
    month_read = _month_after(tokens, end)
    if month_read is not None:
        date = _month_day(month_read[0], day, today)
        return DateMatch(date, start, month_read[1]) if date else None
    # A bare ordinal word ("fourth") is too ambiguous without "the" or digits ("24th").
    if start == i and not tokens[i][0].isdigit():
        return None
    date = _day_of_month(day, today)
    return DateMatch(date, start, end) if date else None


def parse_date_tokens(tokens: list[str], today: dt.date) -> DateMatch | None:
    for i, token in enumerate(tokens):
        if token in ("today", "tonight"):
            return DateMatch(today, i, i + 1)
        if token == "this" and i + 1 < len(tokens) and tokens[i + 1] in ("morning", "afternoon", "evening"):
            return DateMatch(today, i, i + 2)
        if token == "tomorrow":
            if tokens[max(0, i - 3) : i] == ["the", "day", "after"]:
                return DateMatch(today + dt.timedelta(days=2), i - 3, i + 1)
            if tokens[max(0, i - 2) : i] == ["day", "after"]:
                return DateMatch(today + dt.timedelta(days=2), i - 2, i + 1)
            return DateMatch(today + dt.timedelta(days=1), i, i + 1)
        if token in _WEEKDAYS:
            # "tuesday the 24th": the calendar date is the more precise of the two.
            after = i + 1 if i + 1 < len(tokens) else None
            explicit = _explicit_day(tokens, after, today) if after is not None else None
            if explicit is not None:
                return DateMatch(explicit.date, i, explicit.end)
            previous = tokens[i - 1] if i > 0 else ""
            ahead = (_WEEKDAYS[token] - today.weekday()) % 7
            # "this monday" said on a Monday is today; a bare or "next" weekday is the coming one,
            # read back in full before anything is booked.
            if ahead == 0 and previous != "this":
                ahead = 7
            start = i - 1 if previous in ("next", "this", "coming", "on") else i
            return DateMatch(today + dt.timedelta(days=ahead), start, i + 1)
        explicit = _explicit_day(tokens, i, today)
        if explicit is not None:
            return explicit
    return None


# --- times ---------------------------------------------------------------------------------------

_AM = frozenset({"am", "morning"})
_PM = frozenset({"pm", "afternoon", "evening", "night", "tonight"})
_TIME_LEAD = frozenset({"at", "around", "about", "by", "after", "before", "say", "maybe", "for"})


def _minutes_after(tokens: list[str], j: int) -> tuple[int, int] | None:
    """The minutes in "ten thirty", "ten oh five", "ten forty five", "10 30"."""
    if j >= len(tokens):
        return None
    if tokens[j] in _ZERO and j + 1 < len(tokens) and tokens[j + 1] in _UNITS:
        return _UNITS[tokens[j + 1]], j + 2
    if tokens[j].isdigit() and len(tokens[j]) == 2:
        return int(tokens[j]), j + 1
    if tokens[j] in _TENS or tokens[j] in ("fifteen", "ten", "twelve"):
        read = read_cardinal(tokens, j)
        if read and read[0] < 60:
            return read
    return None


def _resolve_hour(hour: int, suffix: set[str], part_of_day: PartOfDay | None) -> int | None:
    if hour > 23:
        return None
    if hour > 12:
        return hour
    if suffix & _PM or (not suffix & _AM and part_of_day in ("afternoon", "evening")):
        return hour if hour == 12 else hour + 12
    if suffix & _AM or part_of_day == "morning":
        return 0 if hour == 12 else hour
    # Without am/pm a garage hears 1-6 as afternoon (nobody books a car in at 3 AM) and 7-11 as morning.
    return hour + 12 if 1 <= hour <= 6 else hour


def parse_time_tokens(
    tokens: list[str], taken: set[int], part_of_day: PartOfDay | None, *, expect_time: bool = False
) -> dt.time | None:
    """The first clock time in `tokens` outside the `taken` indices (a date's span). A bare number counts
    only after "at"/"around"... or when `expect_time` says the caller was just asked for a time."""
    for i, token in enumerate(tokens):
        if i in taken:
            continue
        if token in ("noon", "midday", "lunchtime"):
            return dt.time(12, 0)
        hour: int | None = None
        minute = 0
        end = i
        explicit = False
        if token in ("half", "quarter") and i + 2 < len(tokens) and tokens[i + 1] in ("past", "after", "to"):
            read = read_cardinal(tokens, i + 2)
            if read and 1 <= read[0] <= 12:
                hour, end, explicit = read[0], read[1], True
                if tokens[i + 1] == "to":
                    hour, minute = (hour - 1 or 12), 45
                else:
                    minute = 30 if token == "half" else 15
        elif m := re.fullmatch(r"(\d{1,2}):(\d\d)", token):
            hour, minute, end, explicit = int(m.group(1)), int(m.group(2)), i + 1, True
        else:
            read = read_cardinal(tokens, i)
            if read is None or not 0 <= read[0] <= 23:
                continue
            hour, end = read
            minutes = _minutes_after(tokens, end)
            if minutes is not None:
                minute, end, explicit = minutes[0], minutes[1], True
        if hour is None or any(k in taken for k in range(i, end)):
            continue
        suffix: set[str] = set()
        rest = tokens[end : end + 3]
        if rest[:1] in (["am"], ["pm"]):
            suffix.add(rest[0])
        elif rest[:2] in (["a", "m"], ["p", "m"]):
            suffix.add(rest[0] + "m")
        elif rest[:1] == ["oclock"] or rest[:2] == ["o", "clock"]:
            suffix.add("oclock")
        elif rest[:1] == ["in"] and len(rest) == 3 and rest[2] in _AM | _PM:
            suffix.add(rest[2])
        elif rest[:2] == ["at", "night"] or rest[:1] == ["tonight"]:
            suffix.add("night")
        lead = tokens[i - 1] if i > 0 else ""
        if token == "one" and not (explicit or suffix) and lead and lead not in _TIME_LEAD:
            continue  # "the later one", "that one": a pronoun, not one o'clock
        if not (explicit or suffix or lead in _TIME_LEAD or expect_time):
            continue
        resolved = _resolve_hour(hour, suffix, part_of_day)
        if resolved is None or minute > 59:
            continue
        return dt.time(resolved, minute)
    return None


# --- writing: what the synthesiser says ----------------------------------------------------------


def spoken_date(day: dt.date) -> str:
    """ "Tuesday, November 24" (the year only matters to nobody on a call about the next few weeks)."""
    return f"{day:%A}, {day:%B} {day.day}"


def spoken_time(time: dt.time) -> str:
    """ "10 AM", "10:30 AM", "2 PM"; noon is "12 PM", which the synthesiser reads as callers say it."""
    hour = time.hour % 12 or 12
    period = "AM" if time.hour < 12 else "PM"
    return f"{hour} {period}" if time.minute == 0 else f"{hour}:{time.minute:02d} {period}"


def spoken_price(amount: Decimal) -> str:
    """ "$49" for whole dollars, "$18.99" otherwise."""
    if amount == amount.to_integral_value():
        return f"${int(amount)}"
    return f"${amount.quantize(Decimal('0.01'))}"


def spoken_duration(minutes: int) -> str:
    """ "30 minutes", "an hour", "an hour and a half", "2 hours", "2 hours and 15 minutes"."""
    hours, rest = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes} minutes"
    if hours == 1 and rest == 30:
        return "an hour and a half"
    head = "an hour" if hours == 1 else f"{hours} hours"
    return head if rest == 0 else f"{head} and {rest} minutes"


def with_article(noun: str) -> str:
    """ "an oil change", "a tire rotation"."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def spoken_list(items: list[str], conjunction: str = "or") -> str:
    """ "a, b or c" (no Oxford comma: the pause before "or" is the synthesiser's comma)."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def spoken_code(code: str) -> str:
    """ "A1042" -> "A 1 0 4 2", so it is read character by character and not as "one thousand..."."""
    return " ".join(code)
