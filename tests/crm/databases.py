"""Seeded CRM databases on SQLite and PostgreSQL, shared by the crm and tools test packages.

Each backend is migrated once per run; every test then empties it and seeds the demo business again
(ids start at 1: Dana 1, Marcus 2, Priya 3), which costs ~50 ms where a fresh PostgreSQL database
costs ~0.5 s here. Fixtures are imported into the conftest of each package that uses them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.scratch import (
    Backend,
    check_postgres,
    create_postgres_database,
    drop_postgres_database,
    empty_all_tables,
)
from crm.seed import seed_demo_business
from tests.services import POSTGRES_URL, unavailable

SEED_DAY = dt.date(2026, 11, 18)  # a Wednesday: Dana's seeded tire rotation is Thursday 19th at 09:00
WALL_CLOCK = dt.datetime(2026, 11, 18, 10, 0)  # business-local "now" the tool tests run at
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def require_postgres() -> str:
    """The admin URL of the test server; skips (or fails, with SWITCHBOARD_REQUIRE_SERVICES=1) without one."""
    try:
        check_postgres(POSTGRES_URL)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL unreachable at {POSTGRES_URL}: {str(exc).strip()}")
    return POSTGRES_URL


@pytest.fixture(scope="session", params=BACKENDS)
def migrated_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, str]]:
    """One migrated database per backend for the whole run."""
    backend: Backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('crm-db') / 'crm.sqlite3'}"
        upgrade_to_head(url)
        yield backend, url
        return
    admin_url = require_postgres()
    url = create_postgres_database(admin_url, prefix="switchboard_test")
    try:
        upgrade_to_head(url)
        yield backend, url
    finally:
        drop_postgres_database(admin_url, url)


@pytest.fixture
def backend(migrated_database: tuple[Backend, str]) -> Backend:
    return migrated_database[0]


@pytest.fixture
def engine(migrated_database: tuple[Backend, str]) -> Iterator[Engine]:
    """The demo business freshly seeded for SEED_DAY; a pool big enough for the booking race test."""
    engine = create_engine_for(migrated_database[1], pool_size=25)
    empty_all_tables(engine)
    with session_factory(engine).begin() as session:
        assert seed_demo_business(session, SEED_DAY)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)
