"""Whole conversations with the dialogue policy against the real DatabaseToolBox on a seeded SQLite CRM.

The clock is fixed at Monday 2026-11-23 08:30, so "tomorrow" is Tuesday, November 24 and Dana's seeded
tire rotation is on Tuesday, November 24 at 9 AM.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from agent.dialogue import AgentReply, DialoguePolicy
from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.models import Booking, Customer, Service
from crm.seed import seed_demo_business
from tools.api import ToolBox
from tools.toolbox import DatabaseToolBox

NOW = dt.datetime(2026, 11, 23, 8, 30)  # a Monday
TOMORROW = dt.date(2026, 11, 24)
DANA = "+15550100001"
MARCUS = "+15550100002"
PRIYA = "+15550100003"
STRANGER = "+15550109999"


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        seed_demo_business(session, NOW.date())
    yield engine, sessions
    engine.dispose()


@pytest.fixture
def tools(crm: tuple[Engine, sessionmaker[Session]]) -> DatabaseToolBox:
    return DatabaseToolBox(crm[1], now=lambda: NOW)


def policy(tools: ToolBox, phone: str | None, call_id: str = "call-1") -> DialoguePolicy:
    return DialoguePolicy(tools, caller_phone=phone, call_id=call_id, now=lambda: NOW)


def bookings_of(sessions: sessionmaker[Session], phone: str) -> list[tuple[str, dt.datetime, str]]:
    with sessions() as session:
        rows = session.execute(
            select(Service.name, Booking.start, Booking.status)
            .join(Booking, Booking.service_id == Service.id)
            .join(Customer, Customer.id == Booking.customer_id)
            .where(Customer.phone == phone)
            .order_by(Booking.start)
        )
        return [(name, start, status) for name, start, status in rows.all()]


def say(agent: DialoguePolicy, *lines: str) -> AgentReply:
    reply = AgentReply("")
    for line in lines:
        reply = agent.respond(line)
    return reply


# --- booking ---------------------------------------------------------------------------------------


def test_greeting_uses_the_callers_first_name(tools: DatabaseToolBox) -> None:
    reply = policy(tools, MARCUS).greet()
    assert reply.text == "Hi Marcus, thanks for calling Riverside Auto Care. How can I help you today?"
    assert policy(tools, STRANGER).greet().text.startswith("Hi, thanks for calling Riverside Auto Care.")


def test_marcus_books_an_oil_change_tomorrow_at_ten(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, MARCUS)
    agent.greet()
    reply = agent.respond("i'd like to book an oil change tomorrow at ten in the morning")
    assert reply.text == (
        "I can book an oil change for you on Tuesday, November 24 at 10 AM. "
        "It takes about 30 minutes and costs $49. Shall I book it?"
    )
    assert not bookings_of(crm[1], MARCUS)  # nothing is written before the caller agrees
    reply = agent.respond("yes")
    assert reply.text.startswith("You're all set.")
    assert "Tuesday, November 24 at 10 AM" in reply.text
    assert reply.text.endswith("Anything else I can help with?")
    assert bookings_of(crm[1], MARCUS) == [("oil change", dt.datetime(2026, 11, 24, 10, 0), "confirmed")]
    assert agent.facts["booking_id"] and agent.facts["service"] == "oil change"
    assert agent.facts["date"] == "2026-11-24" and agent.facts["time"] == "10:00"
    reply = agent.respond("no thanks")
    assert reply.hangup
    assert bookings_of(crm[1], MARCUS) == [("oil change", dt.datetime(2026, 11, 24, 10, 0), "confirmed")]


def test_booking_collects_service_then_day_then_time(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, PRIYA)
    reply = agent.respond("um i'd like to make an appointment")
    assert "Which service" in reply.text and "an oil change" in reply.text
    reply = agent.respond("can you rotate my tires")
    assert reply.text.endswith("What day would you like to come in?")
    reply = agent.respond("wednesday")
    assert "Wednesday, November 25" in reply.text and "8 AM" in reply.text
    reply = agent.respond("half past two")
    assert reply.text.startswith("I can book a tire rotation for you on Wednesday, November 25 at 2:30 PM.")
    assert "$35" in reply.text
    agent.respond("yep")
    assert bookings_of(crm[1], PRIYA) == [("tire rotation", dt.datetime(2026, 11, 25, 14, 30), "confirmed")]


def test_time_first_then_day_and_a_side_question_resumes_the_booking(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, MARCUS)
    assert agent.respond("can i bring my car in at ten for an oil change").text.endswith(
        "What day would you like to come in?"
    )
    reply = agent.respond("thursday")
    assert reply.text.startswith("I can book an oil change for you on Thursday, November 26 at 10 AM.")
    reply = agent.respond("where are you located")
    assert reply.text.startswith("We're at 221 River Road. I can book an oil change for you on Thursday")
    assert agent.respond("how much is it").text == (
        "An oil change takes about 30 minutes and costs $49. Shall I book it?"
    )
    agent.respond("yes")
    assert bookings_of(crm[1], MARCUS) == [("oil change", dt.datetime(2026, 11, 26, 10, 0), "confirmed")]


def test_no_to_the_read_back_asks_what_to_change(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, MARCUS)
    agent.respond("i need my brakes checked tomorrow at ten")
    reply = agent.respond("no")
    assert "What would you like to change" in reply.text
    reply = agent.respond("the time")
    assert "What time" in reply.text
    reply = agent.respond("eleven")
    assert "brake inspection for you on Tuesday, November 24 at 11 AM" in reply.text
    assert "45 minutes" in reply.text and "$79" in reply.text
    agent.respond("correct")
    assert bookings_of(crm[1], MARCUS) == [
        ("brake inspection", dt.datetime(2026, 11, 24, 11, 0), "confirmed")
    ]


def test_full_bays_give_the_nearest_free_times(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    ten = dt.datetime(2026, 11, 24, 10, 0)
    for phone in (DANA, PRIYA):
        customer = tools.lookup_customer(phone)
        assert customer is not None
        tools.book(customer.id, "oil change", ten)
    stranger = tools.create_customer(STRANGER, "Sam Carter")
    tools.book(stranger.id, "oil change", ten)

    agent = policy(tools, MARCUS)
    reply = agent.respond("book an oil change tomorrow at ten")
    assert reply.text == (
        "Sorry, 10 AM on Tuesday, November 24 is already taken. The nearest free times are 9:30 AM and "
        "10:30 AM. Would either of those work?"
    )
    reply = agent.respond("the later one")
    assert "at 10:30 AM" in reply.text and reply.text.endswith("Shall I book it?")
    agent.respond("sure")
    assert bookings_of(crm[1], MARCUS) == [("oil change", dt.datetime(2026, 11, 24, 10, 30), "confirmed")]


def test_anything_later_offers_the_next_free_times(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    assert "I can do 8 AM or 8:30 AM" in agent.respond("oil change tomorrow morning").text
    assert agent.respond("do you have anything later").text == (
        "I can also do 9 AM or 9:30 AM on Tuesday, November 24. Would that work?"
    )
    assert "at 9:30 AM" in agent.respond("the second one").text


def test_slot_taken_between_read_back_and_yes_offers_alternatives(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, MARCUS)
    assert "Shall I book it?" in agent.respond("oil change tomorrow at 2 pm").text
    two = dt.datetime(2026, 11, 24, 14, 0)
    for phone, name in ((DANA, None), (PRIYA, None), (STRANGER, "Sam Carter")):
        customer = tools.lookup_customer(phone) if name is None else tools.create_customer(phone, name)
        assert customer is not None
        tools.book(customer.id, "oil change", two)
    reply = agent.respond("yes please")
    assert reply.text.startswith("Sorry, that time was just taken.")
    assert "1:30 PM and 2:30 PM" in reply.text
    assert bookings_of(crm[1], MARCUS) == []


def test_sunday_is_closed(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    reply = agent.respond("can i book a full service on sunday")
    assert reply.text == "Sorry, we're closed on Sunday, November 29. Would another day work?"
    reply = agent.respond("monday then at nine")
    assert "full service for you on Monday, November 30 at 9 AM" in reply.text
    assert "about 2 hours" in reply.text and "$249" in reply.text


def test_saturday_afternoon_is_outside_opening_hours(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    reply = agent.respond("oil change saturday at three")
    assert reply.text.startswith(
        "Sorry, we can't do 3 PM on Saturday, November 28. We're open Monday to Friday 8 AM to 6 PM, Saturday"
    )
    assert reply.text.endswith("The latest I can do that day is 12:30 PM. Would that work?")
    assert "12:30 PM" in agent.respond("yes").text

    agent = policy(tools, MARCUS)
    reply = agent.respond("do you have any openings for a tire rotation saturday afternoon")
    assert reply.text.startswith("Sorry, I have nothing in the afternoon on Saturday, November 28.")


def test_unknown_caller_gives_a_name_then_books(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, STRANGER)
    agent.greet()
    reply = agent.respond("i need a new battery friday at 9")
    assert reply.text == "Can I have your name for the booking, please?"
    reply = agent.respond("sure it's jordan baker")
    assert reply.text.startswith(
        "Thanks, Jordan. I can book a battery replacement for you on Friday, November 27"
    )
    assert "$120, plus the battery" in reply.text
    agent.respond("yes")
    assert bookings_of(crm[1], STRANGER) == [
        ("battery replacement", dt.datetime(2026, 11, 27, 9, 0), "confirmed")
    ]
    assert tools.lookup_customer(STRANGER) == tools.lookup_customer("(555) 010-9999")
    customer = tools.lookup_customer(STRANGER)
    assert customer is not None and customer.name == "Jordan Baker"


def test_unknown_caller_who_introduced_themselves_is_not_asked_again(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, STRANGER)
    assert agent.respond("hi this is jordan").text == "Hi Jordan! How can I help you today?"
    reply = agent.respond("tire rotation saturday morning")
    assert reply.text == "On Saturday, November 28 I can do 9 AM or 9:30 AM. What time works for you?"
    reply = agent.on_dtmf("2")  # keypad choice between the two offers
    assert reply.text.startswith(
        "Thanks, Jordan. I can book a tire rotation for you on Saturday, November 28 at 9:30"
    )
    agent.on_dtmf("1")
    assert bookings_of(crm[1], STRANGER) == [("tire rotation", dt.datetime(2026, 11, 28, 9, 30), "confirmed")]


def test_caller_without_number_is_transferred_to_book(tools: DatabaseToolBox) -> None:
    reply = policy(tools, None).respond("book an oil change tomorrow at ten")
    assert reply.transfer


# --- existing bookings -----------------------------------------------------------------------------


def test_dana_checks_then_cancels_her_tire_rotation(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, DANA)
    reply = agent.respond("when is my appointment")
    assert reply.text.startswith("You have a tire rotation on Tuesday, November 24 at 9 AM.")
    reply = agent.respond("i'd like to cancel it")
    assert reply.text == "You have a tire rotation on Tuesday, November 24 at 9 AM. Shall I cancel it?"
    assert bookings_of(crm[1], DANA)[0][2] == "confirmed"
    reply = agent.respond("yes please do")
    assert reply.text.startswith("Done. Your tire rotation on Tuesday, November 24 is cancelled.")
    assert bookings_of(crm[1], DANA) == [("tire rotation", dt.datetime(2026, 11, 24, 9, 0), "cancelled")]
    assert "don't see any upcoming bookings" in agent.respond("do i have any appointments").text


def test_cancel_asks_which_when_there_are_several(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    dana = tools.lookup_customer(DANA)
    assert dana is not None
    tools.book(dana.id, "oil change", dt.datetime(2026, 11, 26, 15, 0))
    agent = policy(tools, DANA)
    reply = agent.respond("i need to cancel an appointment")
    assert "Which one would you like to cancel?" in reply.text
    reply = agent.respond("the oil change")
    assert reply.text == "You have an oil change on Thursday, November 26 at 3 PM. Shall I cancel it?"
    assert agent.respond("nope").text.startswith("Okay, I'll leave it as it is.")
    assert [status for *_, status in bookings_of(crm[1], DANA)] == ["confirmed", "confirmed"]


def test_dana_moves_her_tire_rotation(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, DANA)
    reply = agent.respond("can i reschedule my appointment to thursday at ten")
    assert reply.text == "I can move your tire rotation to Thursday, November 26 at 10 AM. Shall I do that?"
    reply = agent.respond("yes")
    assert reply.text.startswith(
        "You're all set. Your tire rotation is now on Thursday, November 26 at 10 AM."
    )
    assert bookings_of(crm[1], DANA) == [
        ("tire rotation", dt.datetime(2026, 11, 24, 9, 0), "cancelled"),
        ("tire rotation", dt.datetime(2026, 11, 26, 10, 0), "confirmed"),
    ]


# --- orders, parts, information --------------------------------------------------------------------


def test_order_status_for_both_orders(tools: DatabaseToolBox) -> None:
    agent = policy(tools, DANA)
    reply = agent.respond("is my order ready")
    assert "What's the order number?" in reply.text
    reply = agent.respond("a one zero four two")
    assert reply.text.startswith("Order A 1 0 4 2, your front brake pads, is ready for pickup.")
    reply = agent.respond("and order b as in bravo two oh seven seven")
    assert reply.text.startswith("Order B 2 0 7 7, the battery 24F, is on backorder.")
    assert agent.facts["order_number"] == "B2077"


def test_unknown_order_number_is_asked_again_then_a_person_offered(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    reply = agent.respond("what's the status of order c nine nine nine nine")
    assert "can't find order C 9 9 9 9" in reply.text and "again" in reply.text
    reply = agent.respond("c nine nine nine eight")
    assert "connect you to someone" in reply.text
    assert agent.respond("yes").transfer


def test_inventory_questions(tools: DatabaseToolBox) -> None:
    agent = policy(tools, PRIYA)
    reply = agent.respond("do you have wiper blades in stock")
    assert reply.text.startswith("Yes, we have 14 wiper blades 22 inch in stock at $18.99 each.")
    reply = agent.respond("what about brake pads do you have any")
    assert reply.text.startswith("Sorry, the front brake pads are out of stock right now.")
    assert "$64.50" in reply.text
    reply = agent.respond("how much is the five w thirty synthetic oil")
    assert "$32" in reply.text and "40" in reply.text
    reply = agent.respond("do you sell spark plugs")
    assert reply.text.startswith("Sorry, I couldn't find spark plugs")


def test_service_price_question_leads_into_a_booking(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    reply = agent.respond("how much does a brake inspection cost")
    assert (
        reply.text == "A brake inspection takes about 45 minutes and costs $79. Would you like to book one?"
    )
    reply = agent.respond("yes tomorrow morning")
    assert "On Tuesday, November 24 I can do 8 AM or 8:30 AM." in reply.text
    assert agent.respond("the first one").text.startswith(
        "I can book a brake inspection for you on Tuesday, November 24 at 8 AM."
    )


def test_hours_and_address(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    reply = agent.respond("what are your opening hours")
    assert reply.text.startswith(
        "We're open Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM, closed Sunday."
    )
    assert agent.respond("are you open on sunday").text.startswith("We're closed on Sunday, November 29.")
    assert agent.respond("where are you located").text.startswith("We're at 221 River Road.")


# --- control -----------------------------------------------------------------------------------------


def test_person_transfers_and_goodbye_hangs_up(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    reply = agent.respond("can i talk to a real person")
    assert reply.transfer and reply.text == "Let me connect you to someone from our team."
    reply = policy(tools, MARCUS).respond("no that's all thanks bye")
    assert reply.hangup and not reply.transfer
    assert policy(tools, MARCUS).on_dtmf("0").transfer


def test_gibberish_gets_clarification_then_a_person_is_offered(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    first = agent.respond("purple monkey dishwasher")
    assert agent.respond("sorry what") == first  # repeated word for word
    assert first.intent == "unknown" and "I can book a service" in first.text
    assert agent.respond("").text.startswith("Sorry, I didn't catch that.")
    agent.respond("blah blah")
    third = agent.respond("zzz qqq")
    assert "connect you to someone" in third.text and not third.transfer
    assert agent.respond("yes").transfer


def test_silence_reprompts_then_hangs_up(tools: DatabaseToolBox) -> None:
    agent = policy(tools, MARCUS)
    agent.respond("book an oil change")
    first = agent.on_silence(1)
    assert first.text == "Are you still there? What day would you like to come in?" and not first.hangup
    assert not agent.on_silence(2).hangup
    assert agent.on_silence(3).hangup


def test_dtmf_answers_yes_no_during_a_confirmation(
    tools: DatabaseToolBox, crm: tuple[Engine, sessionmaker[Session]]
) -> None:
    agent = policy(tools, MARCUS)
    agent.respond("oil change tomorrow at noon")
    reply = agent.on_dtmf("1")
    assert reply.text.startswith("You're all set.")
    assert bookings_of(crm[1], MARCUS) == [("oil change", dt.datetime(2026, 11, 24, 12, 0), "confirmed")]


def test_a_dead_database_gives_spoken_recoveries_not_exceptions(tmp_path: Path) -> None:
    # A database file that was never migrated: every tool call fails inside SQLAlchemy.
    engine = create_engine_for(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    tools = DatabaseToolBox(session_factory(engine), now=lambda: NOW)
    agent = policy(tools, MARCUS)
    replies = [
        agent.greet(),
        agent.respond("book an oil change tomorrow at ten"),
        agent.respond("what are your hours"),
        agent.respond("is order a one zero four two ready"),
    ]
    assert all(reply.text for reply in replies)
    assert replies[0].text.startswith("Hi, thanks for calling")
    assert replies[1].text.startswith("Sorry, I had trouble with that.")
    engine.dispose()


def test_random_recogniser_output_never_breaks_the_policy(tools: DatabaseToolBox) -> None:
    """Seeded word salad from the domain vocabulary, in every state it leads to: no turn may end in the
    internal-error recovery (which is what an exception inside the policy turns into)."""
    phrases = (
        "yes no book oil change tire rotation brakes checked new battery full service tomorrow today "
        "saturday sunday next tuesday the 24th november twenty fourth at ten thirty half past two pm "
        "morning afternoon noon cancel my appointment order a one zero four two b two zero seven seven "
        "wiper blades in stock how much hours where person um uh the first one later earliest name is "
        "jordan that's right nope reschedule move it five eleven o'clock"
    )
    words = [word for phrase in phrases for word in phrase.split()]
    rng = random.Random(1234)
    for phone in (DANA, MARCUS, STRANGER, None):
        agent = policy(tools, phone, call_id=f"fuzz-{phone}")
        agent.greet()
        for _ in range(60):
            reply = agent.respond(" ".join(rng.choices(words, k=rng.randint(1, 7))))
            assert reply.text and reply.intent != "error", reply
            if reply.hangup or reply.transfer:
                agent = policy(tools, phone, call_id=f"fuzz-{phone}")
