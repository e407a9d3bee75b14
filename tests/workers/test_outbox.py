"""The outbox, courier, spool, webhook signature and dead-letter API, in-process on a migrated SQLite CRM."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from crm import outbox
from crm.admin_users import create_admin_user
from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.models import AppliedWrite, Booking, DeadLetter, OutboxMessage
from crm.outbox import OutboxWrite
from crm.seed import seed_demo_business
from crm.web.auth import SESSION_COOKIE, AdminSettings, Authenticator
from tests.workers.peers import ExternalCrm, external_crm
from tools.toolbox import SPOOLED_STATUS, DatabaseToolBox
from workers.api import dead_letter_router
from workers.config import WorkerSettings
from workers.context import WorkerContext
from workers.delivery import Outcome
from workers.retry import RetryPolicy
from workers.runner import OutboxRunner
from workers.spool import WriteSpool
from workers.webhook import sign, verify

SECRET = "unit-secret"
SEED_DAY = dt.date(2026, 11, 18)
WALL_CLOCK = dt.datetime(2026, 11, 18, 10, 0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'crm.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    with session_factory(engine).begin() as session:
        seed_demo_business(session, SEED_DAY)
    yield engine
    engine.dispose()


@pytest.fixture
def crm() -> Iterator[ExternalCrm]:
    with external_crm(SECRET) as receiver:
        yield receiver


def make_context(engine: Engine, tmp_path: Path, crm: ExternalCrm, *, max_attempts: int = 5) -> WorkerContext:
    settings = WorkerSettings(
        data_dir=tmp_path / "data",
        crm_webhook_url=crm.url,
        crm_webhook_secret=SecretStr(SECRET),
        retry_base_s=0.01,
        retry_cap_s=0.02,
        retry_max_attempts=max_attempts,
        outbox_lease_s=0.05,
    )
    return WorkerContext.build(settings, engine=engine)


def external_write(number: int) -> OutboxWrite:
    return OutboxWrite("analytics.event", "external", {"n": number}, outbox.idempotency_key("unit", number))


def count(sessions: sessionmaker[Session], model: type[object], *where: object) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def test_retry_policy_grows_with_jitter_and_stops() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=8.0, max_attempts=4)
    rng = random.Random(7)
    delays = [policy.delay_s(attempt, rng) for attempt in (1, 2, 3, 4, 5, 6)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
    assert all(4.0 <= delay <= 8.0 for delay in delays[3:])  # capped
    assert len({round(policy.delay_s(3, rng), 6) for _ in range(20)}) > 1  # jittered
    assert not policy.exhausted(3) and policy.exhausted(4)


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"id":"k"}'
    header = sign(SECRET.encode(), body, 1_000_000)
    assert verify(SECRET.encode(), body, header, now=1_000_010)
    assert not verify(SECRET.encode(), body + b" ", header, now=1_000_010)
    assert not verify(b"other", body, header, now=1_000_010)
    assert not verify(SECRET.encode(), body, header, now=1_000_000 + 3600)  # stale: a replay
    assert not verify(SECRET.encode(), body, "garbage", now=1_000_000)


def test_runner_delivers_each_write_once(engine: Engine, tmp_path: Path, crm: ExternalCrm) -> None:
    context = make_context(engine, tmp_path, crm)
    with context.sessions.begin() as session:
        for number in range(50):
            outbox.record(session, external_write(number))
    runner = OutboxRunner(context)
    assert runner.run_once() == 50
    assert runner.run_once() == 0
    # A duplicate task for a delivered message does nothing.
    assert context.courier.deliver(1) is Outcome.SKIPPED
    assert crm.applied_count() == 50 and sum(crm.repeats.values()) == 0
    assert count(context.sessions, OutboxMessage, OutboxMessage.status == "delivered") == 50


def test_exhausted_retries_become_a_dead_letter_that_replays(
    engine: Engine, tmp_path: Path, crm: ExternalCrm
) -> None:
    context = make_context(engine, tmp_path, crm, max_attempts=3)
    with context.sessions.begin() as session:
        outbox.record(session, external_write(1))
    crm.down()
    outcomes = [context.courier.deliver(1) for _ in range(3)]
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.DEAD]

    auth = Authenticator(AdminSettings(sessions=lambda: context.sessions, secret_key=b"k" * 32))
    app = FastAPI()
    app.include_router(dead_letter_router(lambda: context.sessions, auth))
    client = TestClient(app)
    admin = create_admin_user(context.sessions, "ada", "correct horse battery staple")
    supervisor = create_admin_user(context.sessions, "sam", "correct horse battery staple", role="supervisor")
    as_admin = {"Authorization": f"Bearer {auth.api_token(admin)}"}
    as_supervisor = {"Authorization": f"Bearer {auth.api_token(supervisor)}"}
    assert client.get("/api/dead-letters").status_code == 401
    letters = client.get("/api/dead-letters", headers=as_supervisor).json()
    assert len(letters) == 1
    assert letters[0]["attempts"] == 3 and "unreachable" in letters[0]["last_error"]
    assert letters[0]["status"] == "dead"
    replay_url = f"/api/dead-letters/{letters[0]['id']}/replay"
    assert client.post(replay_url, headers=as_supervisor).status_code == 403

    # The admin page lists it with a replay button for admins.
    page = client.get(
        "/admin/dead-letters", headers={"Cookie": f"{SESSION_COOKIE}={auth.session_cookie(admin)}"}
    )
    assert page.status_code == 200 and "unreachable" in page.text and "Replay" in page.text

    crm.up()
    replayed = client.post(replay_url, headers=as_admin)
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
    assert client.post(replay_url, headers=as_admin).status_code == 409
    assert client.post("/api/dead-letters/999/replay", headers=as_admin).status_code == 404
    assert OutboxRunner(context).run_once() == 1
    assert crm.applied_count() == 1
    assert client.get("/api/dead-letters", headers=as_admin).json() == []
    everything = client.get("/api/dead-letters", params={"include_replayed": True}, headers=as_admin)
    assert len(everything.json()) == 1


def test_rejected_write_goes_straight_to_dead_letters(
    engine: Engine, tmp_path: Path, crm: ExternalCrm
) -> None:
    context = make_context(engine, tmp_path, crm)
    with context.sessions.begin() as session:
        outbox.record(session, OutboxWrite("no.such.kind", "crm", {}, "k-1"))
    assert context.courier.deliver(1) is Outcome.DEAD
    assert count(context.sessions, DeadLetter) == 1


def test_spool_survives_and_drains_once(engine: Engine, tmp_path: Path) -> None:
    spool = WriteSpool(tmp_path / "spool")
    write = external_write(5)
    spool.put(write)
    spool.put(write)  # the same write spooled twice (a retried tool call) is recorded once
    assert len(spool.pending()) == 2
    assert not list((tmp_path / "spool").glob(".*.tmp"))
    sessions = session_factory(engine)
    assert spool.drain(sessions) == 2
    assert spool.pending() == []
    assert count(sessions, OutboxMessage) == 1


def test_booking_records_its_external_sync_in_the_same_transaction(engine: Engine) -> None:
    sessions = session_factory(engine)
    toolbox = DatabaseToolBox(sessions, now=lambda: WALL_CLOCK, external_sync=True).for_call("call-1")
    made = toolbox.book(1, "oil change", dt.datetime(2026, 11, 20, 9, 0))
    with sessions() as session:
        message = session.scalars(select(OutboxMessage)).one()
    assert message.kind == "booking.create" and message.destination == "external"
    assert json.loads(message.payload)["id"] == made.id
    assert json.loads(message.payload)["source_call_id"] == "call-1"


def test_booking_spooled_while_database_down_lands_later(
    engine: Engine, tmp_path: Path, crm: ExternalCrm
) -> None:
    """SQLite stand-in for the PostgreSQL outage test: the database file is unreadable during the call."""
    sessions = session_factory(engine)
    spool = WriteSpool(tmp_path / "spool")
    broken = session_factory(create_engine_for(f"sqlite:///{tmp_path / 'missing' / 'x' / 'none.sqlite3'}"))
    toolbox = DatabaseToolBox(broken, now=lambda: WALL_CLOCK, spool_write=spool.put).for_call("call-2")
    start = dt.datetime(2026, 11, 20, 9, 0)
    noted = toolbox.book(1, "oil change", start)
    assert noted.status == SPOOLED_STATUS and noted.id == 0
    toolbox.book(1, "oil change", start)  # a repeated request is the same write
    # Meanwhile every bay at that time is taken by someone else.
    with sessions.begin() as session:
        for customer_id in (2, 3, 3):
            session.add(
                Booking(
                    customer_id=customer_id,
                    service_id=1,
                    start=start,
                    end=start + dt.timedelta(hours=1),
                    status="confirmed",
                )
            )
    context = make_context(engine, tmp_path, crm)
    context = WorkerContext(context.settings, engine, sessions, context.courier, spool)
    assert OutboxRunner(context).run_once() == 1
    with sessions() as session:
        landed = session.scalars(select(Booking).where(Booking.source_call_id == "call-2")).all()
        assert [b.status for b in landed] == ["needs_review"]
        assert session.scalar(select(func.count()).select_from(AppliedWrite)) == 1
