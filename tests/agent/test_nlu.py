"""The language understanding rules on recogniser-style text: lower case, numbers as words, fillers."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.nlu import (
    Intent,
    classify_intent,
    normalise,
    parse_date,
    parse_name,
    parse_order_number,
    parse_product,
    parse_service,
    parse_time,
    parse_yes_no,
    understand,
)
from agent.phrasing import (
    spoken_code,
    spoken_date,
    spoken_duration,
    spoken_list,
    spoken_price,
    spoken_time,
    with_article,
)

TODAY = dt.date(2026, 11, 23)  # a Monday


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("i'd like to book an oil change", Intent.BOOK),
        ("i'd like to book a oil change", Intent.BOOK),
        ("um can i get my brakes checked", Intent.BOOK),
        ("i need a new battery", Intent.BOOK),
        ("can you rotate my tires", Intent.BOOK),
        ("i want to bring my car in on friday", Intent.BOOK),
        ("do you have any openings tomorrow", Intent.BOOK),
        ("i'd like to make an appointment", Intent.BOOK),
        ("i need my car looked at", Intent.BOOK),
        ("can you fit me in this afternoon", Intent.BOOK),
        ("I'd like to schedule a full service.", Intent.BOOK),
        ("when is my appointment", Intent.CHECK_BOOKING),
        ("what time is my booking", Intent.CHECK_BOOKING),
        ("do i have an appointment this week", Intent.CHECK_BOOKING),
        ("is my appointment still on", Intent.CHECK_BOOKING),
        ("i need to cancel my tire rotation", Intent.CANCEL_BOOKING),
        ("i can't make it tomorrow", Intent.CANCEL_BOOKING),
        ("please cancel my appointment", Intent.CANCEL_BOOKING),
        ("can i reschedule", Intent.RESCHEDULE),
        ("i'd like to move my appointment to thursday", Intent.RESCHEDULE),
        ("is my order ready", Intent.ORDER_STATUS),
        ("what's the status of order a one zero four two", Intent.ORDER_STATUS),
        ("has my part come in yet", Intent.ORDER_STATUS),
        ("b two zero seven seven", Intent.ORDER_STATUS),
        ("do you have wiper blades in stock", Intent.PART_AVAILABILITY),
        ("how much are front brake pads", Intent.PART_AVAILABILITY),
        ("do you carry the twenty four f battery", Intent.PART_AVAILABILITY),
        ("uh do you sell tires", Intent.PART_AVAILABILITY),
        ("wiper blades", Intent.PART_AVAILABILITY),
        ("how much is an oil change", Intent.SERVICE_INFO),
        ("how long does a full service take", Intent.SERVICE_INFO),
        ("what services do you offer", Intent.SERVICE_INFO),
        ("what are your hours", Intent.HOURS),
        ("what are your opening hours", Intent.HOURS),
        ("what time do you close on saturday", Intent.HOURS),
        ("are you open on sunday", Intent.HOURS),
        ("where are you located", Intent.ADDRESS),
        ("what's your address", Intent.ADDRESS),
        ("can i talk to a person", Intent.PERSON),
        ("let me speak to someone", Intent.PERSON),
        ("representative", Intent.PERSON),
        ("agent", Intent.PERSON),
        ("can i talk to the manager", Intent.PERSON),
        ("get me a human please", Intent.PERSON),
        ("could you connect me to your technician", Intent.PERSON),
        ("can i speak with a mechanic", Intent.PERSON),
        ("customer service", Intent.PERSON),
        # A misheard order number, seen in `bench agent` under load, that used to hand the caller to a person.
        ("i'm calling about my order b two oh have mechanic", Intent.ORDER_STATUS),
        ("no that's all thanks bye", Intent.GOODBYE),
        ("that's it", Intent.GOODBYE),
        ("goodbye", Intent.GOODBYE),
        ("thank you", Intent.THANKS),
        ("hello", Intent.GREETING),
        ("can you say that again", Intent.REPEAT),
        ("yeah", Intent.AFFIRM),
        ("mhm", Intent.AFFIRM),
        ("nope", Intent.DENY),
        ("purple monkey dishwasher", Intent.UNKNOWN),
        ("", Intent.UNKNOWN),
        ("um uh", Intent.UNKNOWN),
    ],
)
def test_intents(text: str, intent: Intent) -> None:
    assert classify_intent(text) is intent


@pytest.mark.parametrize(
    "text",
    [
        "i'll come in person",
        "my mechanic said the brakes are squeaking",
        "the manager told me it would be ready today",
        "is my order ready mechanic",
        "can you get me an appointment with a mechanic",
    ],
)
def test_a_role_word_in_passing_does_not_ask_for_a_person(text: str) -> None:
    assert classify_intent(text) is not Intent.PERSON


@pytest.mark.parametrize(
    ("text", "service"),
    [
        ("book an oil change", "oil change"),
        ("i need to change my oil", "oil change"),
        ("book a oil chains", "oil change"),  # recogniser error
        ("rotate my tires", "tire rotation"),
        ("tire rotation please", "tire rotation"),
        ("get my brakes checked", "brake inspection"),
        ("my breaks are squeaking", "brake inspection"),  # homophone from the recogniser
        ("can you check my brakes", "brake inspection"),
        ("new battery", "battery replacement"),
        ("my battery died", "battery replacement"),
        ("service my car", "full service"),
        ("full service", "full service"),
        ("a tune up", "full service"),
        ("what are your hours", None),
        ("do you have brake pads", None),
    ],
)
def test_services(text: str, service: str | None) -> None:
    assert parse_service(text) == service


@pytest.mark.parametrize(
    ("text", "product"),
    [
        ("do you have wiper blades in stock", "wiper blades"),
        ("windshield wipers", "wiper blades"),
        ("how much are front brake pads", "brake pads"),
        ("do you have a battery", "battery"),
        ("is the five w thirty oil in stock", "synthetic oil"),
        ("do you sell tires", "tire"),
        ("do you have spark plugs in stock", "spark plugs"),
        ("i need an oil change", None),  # the service, not the product
        ("do you have any openings tomorrow", None),
    ],
)
def test_products(text: str, product: str | None) -> None:
    assert parse_product(text) == product


@pytest.mark.parametrize(
    ("text", "date"),
    [
        ("today", dt.date(2026, 11, 23)),
        ("tomorrow", dt.date(2026, 11, 24)),
        ("the day after tomorrow", dt.date(2026, 11, 25)),
        ("on tuesday", dt.date(2026, 11, 24)),
        ("next tuesday", dt.date(2026, 11, 24)),
        ("this saturday", dt.date(2026, 11, 28)),
        ("monday", dt.date(2026, 11, 30)),  # today is Monday: a bare weekday is the coming one
        ("this monday", dt.date(2026, 11, 23)),
        ("the 24th", dt.date(2026, 11, 24)),
        ("on the twenty fourth", dt.date(2026, 11, 24)),
        ("the third", dt.date(2026, 12, 3)),  # already past this month
        ("november twenty fourth", dt.date(2026, 11, 24)),
        ("november 24", dt.date(2026, 11, 24)),
        ("december the first", dt.date(2026, 12, 1)),
        ("the fifth of december", dt.date(2026, 12, 5)),
        ("january second", dt.date(2027, 1, 2)),
        ("friday the 27th", dt.date(2026, 11, 27)),
        ("11/24", dt.date(2026, 11, 24)),
        ("2026-12-01", dt.date(2026, 12, 1)),
        ("november thirty first", None),
        ("the first one", None),
        ("ten thirty", None),
    ],
)
def test_dates(text: str, date: dt.date | None) -> None:
    assert parse_date(text, TODAY) == date


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("at ten", dt.time(10, 0)),
        ("at 10", dt.time(10, 0)),
        ("ten thirty", dt.time(10, 30)),
        ("ten oh five", dt.time(10, 5)),
        ("at two forty five", dt.time(14, 45)),
        ("half past two", dt.time(14, 30)),
        ("quarter past nine", dt.time(9, 15)),
        ("quarter to eleven", dt.time(10, 45)),
        ("two pm", dt.time(14, 0)),
        ("2pm", dt.time(14, 0)),
        ("2 p.m.", dt.time(14, 0)),
        ("seven a m", dt.time(7, 0)),
        ("at three", dt.time(15, 0)),  # a bare 1-6 is afternoon at a garage
        ("at eight", dt.time(8, 0)),  # 7-11 is morning
        ("at five in the morning", dt.time(5, 0)),
        ("at ten in the morning", dt.time(10, 0)),
        ("eleven in the afternoon", dt.time(23, 0)),  # said so: believed, then refused by opening hours
        ("at four o'clock", dt.time(16, 0)),
        ("noon", dt.time(12, 0)),
        ("at twelve", dt.time(12, 0)),
        ("10:30", dt.time(10, 30)),
        ("at 14:00", dt.time(14, 0)),
        ("tomorrow morning", None),
        ("i have two cars", None),  # a bare number outside a time context is not a time
    ],
)
def test_times(text: str, expected: dt.time | None) -> None:
    assert parse_time(text) == expected


def test_a_bare_number_is_a_time_only_when_one_was_asked_for() -> None:
    assert parse_time("ten") is None
    assert parse_time("ten", expect_time=True) == dt.time(10, 0)
    assert parse_time("um two", expect_time=True) == dt.time(14, 0)
    assert parse_time("the later one", expect_time=True) is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("yes", True),
        ("yeah", True),
        ("yep", True),
        ("sure", True),
        ("correct", True),
        ("that's right", True),
        ("please do", True),
        ("uh huh", True),
        ("yes please book it", True),
        ("okay", True),
        ("no", False),
        ("nope", False),
        ("not really", False),
        ("that's not right", False),
        ("no thanks", False),
        ("no that's fine", False),  # the first answer counts
        ("tomorrow at ten", None),
        ("right front tire", None),
    ],
)
def test_yes_no(text: str, answer: bool | None) -> None:
    assert parse_yes_no(text) is answer


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("a one zero four two", "A1042"),
        ("order number a one oh four two", "A1042"),
        ("a ten forty two", "A1042"),
        ("b two zero seven seven", "B2077"),
        ("b as in bravo two oh seven seven", "B2077"),
        ("bravo two zero double seven", "B2077"),
        ("bee two zero seven seven", "B2077"),
        ("it's A1042", "A1042"),
        ("a 1042", "A1042"),
        ("i have a question about order b two zero seven seven", "B2077"),
        ("a ten", None),  # too short
        ("i want to book a oil change", None),
    ],
)
def test_order_numbers(text: str, number: str | None) -> None:
    assert parse_order_number(text) == number


@pytest.mark.parametrize(
    ("text", "expecting", "name"),
    [
        ("my name is priya raman", False, "Priya Raman"),
        ("hi this is dana whitfield calling about my car", False, "Dana Whitfield"),
        ("my name's jordan", False, "Jordan"),
        ("book an oil change", False, None),
        ("jordan baker", True, "Jordan Baker"),
        ("sure it's jordan baker", True, "Jordan Baker"),
        ("yeah my name is sam", True, "Sam"),
        ("jordan baker", False, None),
        ("it is what it is", True, None),
    ],
)
def test_names(text: str, expecting: bool, name: str | None) -> None:
    assert parse_name(text, expecting=expecting) == name


def test_normalise_strips_fillers_and_punctuation() -> None:
    assert normalise("Um, I'd like... uh, an OIL change!") == "id like an oil change"
    assert normalise("At 10:30 a.m., please") == "at 10:30 am please"


def test_understand_combines_everything_in_one_utterance() -> None:
    u = understand("um i'd like to book an oil change tomorrow at ten in the morning", TODAY)
    assert u.intent is Intent.BOOK
    assert (u.service, u.date, u.time, u.part_of_day) == (
        "oil change",
        dt.date(2026, 11, 24),
        dt.time(10),
        "morning",
    )

    u = understand("can i get my brakes checked on november twenty fourth at half past two", TODAY)
    assert (u.service, u.date, u.time) == ("brake inspection", dt.date(2026, 11, 24), dt.time(14, 30))

    # The date's words are not reread as a time: "twenty fourth" is not 8:04 PM.
    u = understand("the twenty fourth", TODAY, expect_time=True)
    assert (u.date, u.time, u.intent) == (dt.date(2026, 11, 24), None, Intent.INFORM)

    u = understand("a one zero four two", TODAY, expect_time=True)
    assert (u.order_number, u.time) == ("A1042", None)

    assert understand("not today", TODAY).date is None

    u = understand("whatever's first available", TODAY)
    assert u.earliest

    u = understand("good morning i need an oil change", TODAY)
    assert u.part_of_day is None and u.service == "oil change"


def test_spoken_forms() -> None:
    assert spoken_date(dt.date(2026, 11, 24)) == "Tuesday, November 24"
    assert [spoken_time(dt.time(h, m)) for h, m in ((10, 0), (10, 30), (14, 0), (12, 0), (0, 15))] == [
        "10 AM",
        "10:30 AM",
        "2 PM",
        "12 PM",
        "12:15 AM",
    ]
    from decimal import Decimal

    assert spoken_price(Decimal("49.00")) == "$49"
    assert spoken_price(Decimal("18.99")) == "$18.99"
    assert spoken_price(Decimal("64.5")) == "$64.50"
    assert [spoken_duration(m) for m in (30, 45, 60, 90, 120, 135)] == [
        "30 minutes",
        "45 minutes",
        "an hour",
        "an hour and a half",
        "2 hours",
        "2 hours and 15 minutes",
    ]
    assert (
        with_article("oil change") == "an oil change" and with_article("tire rotation") == "a tire rotation"
    )
    assert spoken_list(["a", "b", "c"]) == "a, b or c" and spoken_list(["a", "b"], "and") == "a and b"
    assert spoken_code("A1042") == "A 1 0 4 2"
