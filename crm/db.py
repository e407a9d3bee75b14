"""Engines and sessions for SQLite (single host) and PostgreSQL (several workers).

SQLite notes, because its defaults are wrong for a multi-threaded server:
- WAL lets readers proceed while one writer commits; `busy_timeout` makes a writer wait for the lock
  instead of failing at once with "database is locked".
- Python's sqlite3 (before 3.12's `autocommit`) only emits BEGIN before INSERT/UPDATE/DELETE, so a
  SELECT-then-INSERT would read outside any transaction. We switch the driver's transaction handling
  off and emit BEGIN ourselves from SQLAlchemy's `begin` event (the recipe in SQLAlchemy's SQLite
  dialect documentation, "Enabling Non-Legacy SQLite Transactional Modes").
- A transaction that reads and then writes must start with `BEGIN IMMEDIATE`: a deferred transaction
  that later tries to upgrade to a write lock in WAL mode fails with SQLITE_BUSY without waiting.
  Ask for it per transaction with `session.connection(execution_options=IMMEDIATE)` as the first
  statement of the session's transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

# Connection execution option read by the `begin` hook on SQLite; ignored by PostgreSQL.
SQLITE_BEGIN_OPTION: Final = "switchboard_sqlite_begin"
# Connection execution option: how long a SQLite BEGIN may wait for another writer, in milliseconds.
SQLITE_BUSY_TIMEOUT_OPTION: Final = "switchboard_sqlite_busy_timeout_ms"
IMMEDIATE: Final[dict[str, Any]] = {SQLITE_BEGIN_OPTION: "IMMEDIATE"}

DEFAULT_SQLITE_BUSY_TIMEOUT_MS: Final = 5000


def normalise_url(url: str) -> URL:
    """Parse a database URL; bare `postgresql://` (and `postgres://`) mean the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(engine_or_url: Engine | URL) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    return url.get_backend_name() == "sqlite"


def create_engine_for(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine configured for the database behind `url` (see the module notes for SQLite)."""
    parsed = normalise_url(url)
    options: dict[str, Any] = {}
    if pool_size is not None:
        options["pool_size"] = pool_size
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Several threads share pooled connections (never at the same time); sqlite3's
        # same-thread check would reject that.
        options["connect_args"] = {"check_same_thread": False}
        engine = create_engine(parsed, **options)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # A restarted PostgreSQL leaves dead connections in the pool; test them on checkout.
        options["pool_pre_ping"] = True
    return create_engine(parsed, **options)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: tools convert rows into plain results after the commit.
    return sessionmaker(bind=engine, expire_on_commit=False)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take transaction control away from the driver (see module notes).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={DEFAULT_SQLITE_BUSY_TIMEOUT_MS}")
            # WAL with synchronous=NORMAL is durable against application crashes, and only an OS crash
            # can lose the last commits; FULL costs an fsync per booking.
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        mode = options.get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
        # Set on every BEGIN: the pooled connection would otherwise keep the previous caller's value.
        busy_ms = int(options.get(SQLITE_BUSY_TIMEOUT_OPTION, DEFAULT_SQLITE_BUSY_TIMEOUT_MS))
        connection.exec_driver_sql(f"PRAGMA busy_timeout={busy_ms}")
        connection.exec_driver_sql(f"BEGIN {mode}")
