"""Short CRM transactions with a time limit, and the boundary where SQLAlchemy errors become ToolErrors.

Every tool call is one transaction. Writers that read before they write (booking, cancelling) are
serialised so that what they read is still true when they commit:
- SQLite: `BEGIN IMMEDIATE` takes the database write lock at the start (see crm.db);
- PostgreSQL: `SELECT ... FOR UPDATE` on the business row, which every booking writer locks first.
The time limit bounds lock waits and statements (SQLite busy timeout; PostgreSQL `lock_timeout` and
`statement_timeout`, transaction-local), so a stuck database costs a caller seconds, not the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from crm.db import SQLITE_BEGIN_OPTION, SQLITE_BUSY_TIMEOUT_OPTION
from crm.models import Business
from tools.api import CrmUnavailable, InvalidRequest, NotFound, ToolError


def translate_database_error(error: sa_exc.SQLAlchemyError) -> ToolError:
    """Our error for a SQLAlchemy one; the caller raises it `from` the original."""
    if isinstance(error, sa_exc.IntegrityError):
        return InvalidRequest("the change conflicts with existing records")
    if isinstance(error, sa_exc.TimeoutError):
        return CrmUnavailable("no database connection free in time")
    if isinstance(error, sa_exc.OperationalError):
        # Lock and statement timeouts, "database is locked", refused connections.
        return CrmUnavailable(f"database unavailable: {type(error.orig).__name__}")
    return CrmUnavailable(f"database error: {type(error).__name__}")


class CrmTransactions:
    """Opens the one short transaction each tool call runs in."""

    def __init__(self, sessions: sessionmaker[Session], *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._sessions = sessions
        self._timeout_ms = max(1, round(timeout_s * 1000))

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._transaction(write=False) as session:
            yield session

    @contextmanager
    def writing(self, *, serialise_bookings: bool = False) -> Iterator[Session]:
        """A write transaction; `serialise_bookings` makes concurrent booking writers take turns."""
        with self._transaction(write=True) as session:
            # BEGIN IMMEDIATE already serialises SQLite writers; elsewhere lock the business row.
            needs_row_lock = serialise_bookings and session.get_bind().dialect.name != "sqlite"
            if needs_row_lock and session.scalars(select(Business.id).with_for_update()).first() is None:
                raise NotFound("no business is set up in this database")
            yield session

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Session]:
        try:
            with self._sessions() as session, session.begin():
                self._start(session, write=write)
                yield session
        except sa_exc.SQLAlchemyError as exc:
            raise translate_database_error(exc) from exc

    def _start(self, session: Session, *, write: bool) -> None:
        if session.get_bind().dialect.name == "sqlite":
            # The options must be on the connection before its BEGIN, which this call triggers.
            options: dict[str, object] = {SQLITE_BUSY_TIMEOUT_OPTION: self._timeout_ms}
            if write:
                options[SQLITE_BEGIN_OPTION] = "IMMEDIATE"
            session.connection(execution_options=options)
            return
        connection: Connection = session.connection()
        if connection.dialect.name == "postgresql":
            timeout = f"{self._timeout_ms}ms"
            connection.exec_driver_sql(
                "SELECT set_config('statement_timeout', %(t)s, true),"
                " set_config('lock_timeout', %(t)s, true)",
                {"t": timeout},
            )
