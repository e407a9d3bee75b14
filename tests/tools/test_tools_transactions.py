"""Time limits, database failures and the call log, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.db import create_engine_for, session_factory
from crm.models import ToolInvocation
from tests.crm.databases import WALL_CLOCK
from tools.api import CrmUnavailable, NotFound, SlotUnavailable
from tools.toolbox import DatabaseToolBox
from tools.transactions import CrmTransactions

THURSDAY_11 = dt.datetime(2026, 11, 19, 11, 0)


def test_a_held_booking_lock_makes_book_give_up_within_the_time_limit(
    sessions: sessionmaker[Session],
) -> None:
    impatient = DatabaseToolBox(sessions, timeout_s=0.3, now=lambda: WALL_CLOCK)
    holder = CrmTransactions(sessions, timeout_s=5)
    with holder.writing(serialise_bookings=True):
        started = time.perf_counter()
        with pytest.raises(CrmUnavailable):
            impatient.book(3, "oil change", THURSDAY_11)
        waited = time.perf_counter() - started
    assert 0.2 < waited < 3.0
    # Once the lock is released the same call goes through.
    assert impatient.book(3, "oil change", THURSDAY_11).status == "confirmed"


def test_reads_do_not_wait_for_a_booking_writer(sessions: sessionmaker[Session]) -> None:
    reader = DatabaseToolBox(sessions, timeout_s=0.3, now=lambda: WALL_CLOCK)
    with CrmTransactions(sessions, timeout_s=5).writing(serialise_bookings=True):
        assert reader.order_status("A1042").status == "ready for pickup"
        assert len(reader.find_slots("oil change", THURSDAY_11.date())) == 20


def test_unmigrated_database_is_reported_as_unavailable(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        toolbox = DatabaseToolBox(session_factory(engine), now=lambda: WALL_CLOCK)
        with pytest.raises(CrmUnavailable) as caught:
            toolbox.list_services()
        assert caught.value.__cause__ is not None  # the SQLAlchemy error is kept as the cause
    finally:
        engine.dispose()


def test_unreachable_postgres_is_reported_as_unavailable() -> None:
    # Port 9 (discard) is closed on the loopback interface: the connection is refused at once.
    engine = create_engine_for("postgresql://postgres@127.0.0.1:9/none")
    try:
        with pytest.raises(CrmUnavailable):
            DatabaseToolBox(session_factory(engine)).business_info()
    finally:
        engine.dispose()


def test_invocations_are_recorded_for_a_call(
    toolbox: DatabaseToolBox, sessions: sessionmaker[Session]
) -> None:
    call = toolbox.for_call("a84b4c76e66710@pbx")
    call.order_status("a 1042")
    with pytest.raises(NotFound):
        call.check_inventory("banana")
    call.book(3, "oil change", THURSDAY_11)
    toolbox.business_info()  # not bound to a call: not recorded
    toolbox.book(2, "oil change", THURSDAY_11, source_call_id="other-call")

    with sessions() as session:
        rows = session.scalars(select(ToolInvocation).order_by(ToolInvocation.id)).all()
    assert [(r.call_id, r.tool) for r in rows] == [
        ("a84b4c76e66710@pbx", "order_status"),
        ("a84b4c76e66710@pbx", "check_inventory"),
        ("a84b4c76e66710@pbx", "book"),
        ("other-call", "book"),
    ]
    order, miss, booking, _ = rows
    assert json.loads(order.arguments) == {"order_number": "a 1042"}
    assert json.loads(order.result or "")["status"] == "ready for pickup"
    assert miss.result is None and (miss.error or "").startswith("NotFound")
    assert json.loads(booking.result or "")["start"] == "2026-11-19 11:00:00"
    assert all(r.duration_ms >= 0 for r in rows)


def test_failed_booking_is_recorded_with_its_error(
    toolbox: DatabaseToolBox, sessions: sessionmaker[Session]
) -> None:
    with pytest.raises(SlotUnavailable):
        toolbox.for_call("c1").book(3, "oil change", dt.datetime(2026, 11, 22, 10, 0))
    with sessions() as session:
        row = session.scalars(select(ToolInvocation)).one()
    assert (row.tool, row.result) == ("book", None)
    assert (row.error or "").startswith("SlotUnavailable")


def test_local_now_is_the_business_wall_clock(sessions: sessionmaker[Session]) -> None:
    utc_box = DatabaseToolBox(sessions, now=lambda: dt.datetime(2026, 11, 18, 3, 30, tzinfo=dt.UTC))
    assert utc_box.local_now() == dt.datetime(2026, 11, 17, 22, 30)  # still Tuesday evening in New York
    assert DatabaseToolBox(sessions, now=lambda: WALL_CLOCK).local_now() == WALL_CLOCK
