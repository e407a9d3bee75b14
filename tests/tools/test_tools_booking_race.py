"""Many callers grabbing the last free bay at once: exactly one wins, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import Booking, Customer
from crm.scratch import Backend
from tools.api import BookingInfo, SlotUnavailable, ToolError
from tools.toolbox import DatabaseToolBox

# Thursday afternoon slots; in each, two of the three bays are pre-filled and everyone races for the third.
# Several rounds, because an unserialised race loses only when the transactions happen to interleave.
CONTESTED_SLOTS = [dt.datetime(2026, 11, 19, hour, 0) for hour in (14, 15, 16)]
THREADS = {"sqlite": 20, "postgres": 50}


def race_for(
    contested: dt.datetime, racer: DatabaseToolBox, caller_ids: list[int]
) -> tuple[list[BookingInfo | ToolError], float]:
    """Every caller asks for `contested` at the same moment; returns the outcomes and the wall time."""
    start_line = threading.Barrier(len(caller_ids))

    def attempt(customer_id: int) -> BookingInfo | ToolError:
        start_line.wait()
        try:
            return racer.book(customer_id, "oil change", contested, source_call_id=f"race-{customer_id}")
        except ToolError as exc:
            return exc

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(caller_ids)) as pool:
        outcomes = list(pool.map(attempt, caller_ids))
    return outcomes, time.perf_counter() - began


def test_exactly_one_of_many_concurrent_bookings_gets_the_last_bay(
    backend: Backend, toolbox: DatabaseToolBox, sessions: sessionmaker[Session]
) -> None:
    threads = THREADS[backend]
    with sessions.begin() as session:
        callers = [Customer(phone=f"+1555020{n:04d}", name=f"Caller {n}") for n in range(threads)]
        session.add_all(callers)
        session.flush()
        caller_ids = [caller.id for caller in callers]
    racer = DatabaseToolBox(sessions, timeout_s=10.0, now=lambda: dt.datetime(2026, 11, 18, 10, 0))

    for contested in CONTESTED_SLOTS:
        toolbox.book(1, "oil change", contested)
        toolbox.book(2, "tire rotation", contested)
        outcomes, elapsed = race_for(contested, racer, caller_ids)

        winners = [o for o in outcomes if isinstance(o, BookingInfo)]
        losers = [o for o in outcomes if isinstance(o, SlotUnavailable)]
        others = [o for o in outcomes if not isinstance(o, BookingInfo | SlotUnavailable)]
        assert others == []
        assert len(winners) == 1 and len(losers) == threads - 1
        with sessions() as session:
            in_bays = session.scalar(
                select(func.count())
                .select_from(Booking)
                .where(Booking.start == contested, Booking.status == "confirmed")
            )
        assert in_bays == 3
        print(
            f"\n{backend}: {threads} concurrent bookings for the last bay settled in {elapsed * 1000:.0f} ms"
        )
