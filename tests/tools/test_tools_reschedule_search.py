"""get_booking, reschedule and the knowledge search (with its last-good-answer cache), on both databases."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from crm.db import create_engine_for, session_factory
from crm.models import AuditLog, Booking, KnowledgeArticle
from crm.scratch import Backend
from tests.crm.databases import WALL_CLOCK
from tools.api import CrmUnavailable, InvalidRequest, NotFound, SlotUnavailable
from tools.knowledge import LastGoodAnswers
from tools.toolbox import DatabaseToolBox

THURSDAY = dt.date(2026, 11, 19)
DANA = 1
DANA_BOOKING = 1  # seeded: tire rotation, Thursday 09:00


def at(hour: int, minute: int = 0, day: dt.date = THURSDAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def test_get_booking(toolbox: DatabaseToolBox) -> None:
    booking = toolbox.get_booking(DANA_BOOKING)
    assert (booking.customer_id, booking.service, booking.start, booking.status) == (
        DANA,
        "tire rotation",
        at(9),
        "confirmed",
    )
    with pytest.raises(NotFound):
        toolbox.get_booking(999)


def test_reschedule_moves_the_booking_and_audits(
    toolbox: DatabaseToolBox, sessions: sessionmaker[Session]
) -> None:
    moved = toolbox.reschedule(DANA_BOOKING, at(14, 30))
    assert (moved.start, moved.end, moved.status) == (at(14, 30), at(15), "confirmed")
    assert toolbox.get_booking(DANA_BOOKING).start == at(14, 30)
    with sessions() as session:
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "booking.reschedule")).one()
    assert json.loads(audit.detail) == {"from": at(9).isoformat(), "to": at(14, 30).isoformat()}
    # The old slot is free again: three bays, and nothing else booked at 09:00.
    assert at(9) in [slot.start for slot in toolbox.find_slots("tire rotation", THURSDAY)]


def test_reschedule_may_overlap_its_own_old_time(toolbox: DatabaseToolBox) -> None:
    # Fill the other two bays at 09:15 so only the bay Dana holds remains.
    for customer in (2, 3):
        toolbox.book(customer, "tire rotation", at(9, 15))
    assert toolbox.reschedule(DANA_BOOKING, at(9, 15)).start == at(9, 15)
    # Now all three bays are taken at 09:15: a fourth cannot move there.
    other = toolbox.book(2, "oil change", at(11))
    with pytest.raises(SlotUnavailable):
        toolbox.reschedule(other.id, at(9, 15))


def test_reschedule_refusals(toolbox: DatabaseToolBox) -> None:
    with pytest.raises(SlotUnavailable):
        toolbox.reschedule(DANA_BOOKING, at(20))  # after closing
    with pytest.raises(SlotUnavailable):
        toolbox.reschedule(DANA_BOOKING, at(9, day=dt.date(2026, 11, 22)))  # Sunday
    with pytest.raises(NotFound):
        toolbox.reschedule(999, at(10))
    toolbox.cancel_booking(DANA_BOOKING)
    with pytest.raises(InvalidRequest):
        toolbox.reschedule(DANA_BOOKING, at(10))


def test_search_finds_the_article_that_answers(toolbox: DatabaseToolBox) -> None:
    answer = toolbox.search_business_info("Do you take credit cards?")
    assert answer.articles[0].slug == "payment-methods"
    assert not answer.stale
    assert toolbox.search_business_info("where are you, what's the address").articles[0].slug == "address"
    assert toolbox.search_business_info("cancelling my booking").articles[0].slug == "cancellation-policy"
    assert toolbox.search_business_info("xylophone zebra").articles == ()
    with pytest.raises(InvalidRequest):
        toolbox.search_business_info("what is the")  # only filler words


def test_search_sees_edited_articles(toolbox: DatabaseToolBox, sessions: sessionmaker[Session]) -> None:
    # The SQLite FTS table follows the articles through triggers; PostgreSQL indexes the expression.
    with sessions.begin() as session:
        article = session.scalars(
            select(KnowledgeArticle).where(KnowledgeArticle.slug == "payment-methods")
        ).one()
        article.body = "We accept cash and bitcoin."
        session.add(KnowledgeArticle(slug="towing", title="Towing", body="We tow broken down vehicles."))
    assert toolbox.search_business_info("bitcoin").articles[0].slug == "payment-methods"
    assert toolbox.search_business_info("credit cards").articles == ()
    assert toolbox.search_business_info("can you tow my car").articles[0].slug == "towing"
    with sessions.begin() as session:
        session.execute(delete(KnowledgeArticle).where(KnowledgeArticle.slug == "towing"))
    assert toolbox.search_business_info("tow").articles == ()


def test_failed_search_serves_the_last_good_answer(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    answers = LastGoodAnswers()
    good = DatabaseToolBox(sessions, now=lambda: WALL_CLOCK, answers=answers)
    fresh = good.search_business_info("payment methods")
    engine = create_engine_for(f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}")
    try:
        broken = DatabaseToolBox(session_factory(engine), now=lambda: WALL_CLOCK, answers=answers)
        stale = broken.search_business_info("methods of payment?")  # same words, other order
        assert stale.stale and stale.articles == fresh.articles
        with pytest.raises(CrmUnavailable):
            broken.search_business_info("opening hours")  # never answered before: nothing to serve
    finally:
        engine.dispose()


def test_search_timeout_on_a_locked_table_serves_the_cache(
    backend: Backend, sessions: sessionmaker[Session]
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite readers are never blocked by a writer in WAL mode")
    toolbox = DatabaseToolBox(sessions, now=lambda: WALL_CLOCK)
    fresh = toolbox.search_business_info("opening hours")
    with sessions.begin() as holder:
        holder.execute(text("LOCK TABLE knowledge_articles IN ACCESS EXCLUSIVE MODE"))
        started = time.perf_counter()
        stale = toolbox.search_business_info("opening hours")
        waited = time.perf_counter() - started
    assert stale.stale and stale.articles == fresh.articles
    assert 0.4 < waited < 2.0  # the search's own 0.5 s limit, not the 2 s read limit


def test_invocations_of_new_tools_are_logged(sessions: sessionmaker[Session]) -> None:
    toolbox = DatabaseToolBox(sessions, now=lambda: WALL_CLOCK).for_call("call-7")
    toolbox.reschedule(DANA_BOOKING, at(10))
    with sessions() as session:
        booking = session.get(Booking, DANA_BOOKING)
        assert booking is not None and booking.start == at(10)
        logged = session.scalars(select(AuditLog.actor).where(AuditLog.action == "booking.reschedule")).one()
    assert logged == "agent:call-7"
