"""PostgreSQL goes away in the middle of a call: the call carries on, the booking is spooled to disk, and it
lands exactly once when the database is back. The server is the test's own (initdb, private port)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agent.dialogue import DialoguePolicy
from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.models import AppliedWrite, Booking, Customer
from crm.seed import seed_demo_business
from tests.workers.postgres_server import PrivatePostgres
from tools.toolbox import DatabaseToolBox
from workers.config import WorkerSettings
from workers.context import WorkerContext
from workers.runner import OutboxRunner

NOW = dt.datetime(2026, 11, 23, 8, 30)  # a Monday, business-local
MARCUS = "+15550100002"


def marcus_bookings(sessions: sessionmaker[Session]) -> list[tuple[dt.datetime, str]]:
    with sessions() as session:
        rows = session.execute(
            select(Booking.start, Booking.status)
            .join(Customer, Customer.id == Booking.customer_id)
            .where(Customer.phone == MARCUS)
        )
        return [(start, status) for start, status in rows.all()]


def test_booking_lands_after_postgres_returns(postgres: PrivatePostgres, tmp_path: Path) -> None:
    upgrade_to_head(postgres.url)
    engine = create_engine_for(postgres.url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        seed_demo_business(session, NOW.date())
    settings = WorkerSettings(data_dir=tmp_path / "data", outbox_poll_s=0.1)
    context = WorkerContext.build(settings, engine=engine)
    toolbox = DatabaseToolBox(sessions, now=lambda: NOW, timeout_s=1.0, spool_write=context.spool.put)
    call = toolbox.for_call("call-pg")
    agent = DialoguePolicy(call, caller_phone=MARCUS, call_id="call-pg", now=lambda: NOW)
    try:
        assert agent.greet().text.startswith("Hi Marcus")
        offer = agent.respond("i'd like to book an oil change tomorrow at ten in the morning")
        assert offer.text.endswith("Shall I book it?")

        postgres.stop()
        reply = agent.respond("yes")
        # The caller is not told the booking failed, and the call goes on to its goodbye.
        assert reply.intent != "error" and "sorry" not in reply.text.lower(), reply.text
        # ...and is told the truth: noted now, confirmed later - not "you're all set".
        assert "noted" in reply.text and "confirm" in reply.text and "all set" not in reply.text, reply.text
        assert len(context.spool.pending()) == 1
        goodbye = agent.respond("no thanks, that's all")
        assert goodbye.text

        runner = OutboxRunner(context)
        assert runner.run_once() == 0  # still down: the write stays in the spool
        assert len(context.spool.pending()) == 1

        postgres.start()
        assert runner.run_once() == 1
        assert runner.run_once() == 0
        assert context.spool.pending() == []
        assert marcus_bookings(sessions) == [(dt.datetime(2026, 11, 24, 10, 0), "confirmed")]
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(AppliedWrite)) == 1
    finally:
        engine.dispose()
