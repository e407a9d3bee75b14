"""Engine configuration: URL handling, SQLite pragmas and explicit transaction control."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.db import IMMEDIATE, SQLITE_BUSY_TIMEOUT_OPTION, create_engine_for, normalise_url, session_factory
from crm.migrate import upgrade_to_head
from crm.models import Booking, Customer


def test_plain_postgresql_urls_use_psycopg() -> None:
    for url in ("postgresql://u@db.example/crm", "postgres://u@db.example/crm"):
        assert normalise_url(url).drivername == "postgresql+psycopg"
    assert normalise_url("postgresql+psycopg://u@h/crm").drivername == "postgresql+psycopg"
    engine = create_engine_for("postgresql://u@db.example/crm")  # no connection is made
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_sqlite_creates_parent_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "crm.sqlite3"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert path.exists()
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'crm.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    yield session_factory(engine)
    engine.dispose()


def test_sqlite_immediate_transaction_holds_the_write_lock(sqlite_sessions: sessionmaker[Session]) -> None:
    with sqlite_sessions() as holder, holder.begin():
        holder.connection(execution_options=IMMEDIATE)
        # A reader still proceeds (WAL)...
        with sqlite_sessions() as reader, reader.begin():
            assert reader.scalar(select(Customer.id)) is None
        # ...but a second writer cannot start while the first holds the lock.
        with (
            pytest.raises(sa_exc.OperationalError, match="locked"),
            sqlite_sessions() as other,
            other.begin(),
        ):
            other.connection(execution_options={**IMMEDIATE, SQLITE_BUSY_TIMEOUT_OPTION: 50})


def test_sqlite_select_runs_inside_the_transaction(sqlite_sessions: sessionmaker[Session]) -> None:
    """Without our explicit BEGIN, sqlite3 would not start a transaction for a SELECT at all."""
    with sqlite_sessions() as reader, reader.begin():
        assert reader.scalar(select(Customer.id)) is None
        with sqlite_sessions.begin() as writer:
            writer.add(Customer(phone="+15550100009", name="Late Comer"))
        # Same snapshot as the first read: the concurrent commit is invisible until our transaction ends.
        assert reader.scalar(select(Customer.id)) is None
    with sqlite_sessions() as after:
        assert after.scalar(select(Customer.name)) == "Late Comer"


def test_foreign_keys_are_enforced(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(sa_exc.IntegrityError), sessions.begin() as session:
        start = dt.datetime(2026, 11, 20, 10, 0)
        session.add(
            Booking(
                customer_id=999,
                service_id=1,
                start=start,
                end=start + dt.timedelta(minutes=30),
                status="confirmed",
            )
        )


def test_instants_come_back_timezone_aware_utc(sessions: sessionmaker[Session]) -> None:
    written = dt.datetime(2026, 11, 18, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    with sessions.begin() as session:
        session.add(Customer(phone="+15550100077", name="Tz Check", created_at=written))
    with sessions() as session:
        created = session.scalars(select(Customer.created_at).where(Customer.phone == "+15550100077")).one()
    assert created == written
    assert created.utcoffset() == dt.timedelta(0)


def test_naive_instants_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(sa_exc.StatementError), sessions.begin() as session:
        session.add(Customer(phone="+15550100078", name="Naive", created_at=dt.datetime(2026, 1, 1)))
        session.flush()
