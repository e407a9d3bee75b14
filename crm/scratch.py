"""Throwaway PostgreSQL databases for tests and benchmarks.

A migrated and seeded database is built once as a template; each test then gets a copy with
`CREATE DATABASE ... TEMPLATE`, which is a file copy on the server and much cheaper than migrating again.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from crm.db import normalise_url


def _libpq_url(url: str) -> str:
    # psycopg wants a plain libpq URL, without SQLAlchemy's "+driver" suffix.
    return normalise_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def check_postgres(admin_url: str, timeout_s: float = 3.0) -> None:
    """Raise `psycopg.OperationalError` when the server is unreachable."""
    with psycopg.connect(_libpq_url(admin_url), connect_timeout=max(1, int(timeout_s))):
        pass


def create_postgres_database(admin_url: str, *, prefix: str = "switchboard_scratch", template: str | None = None) -> str:
    """Create a uniquely named database on the server of `admin_url`; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    with psycopg.connect(_libpq_url(admin_url), autocommit=True) as connection:
        connection.execute(statement)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(admin_url: str, database_url: str) -> None:
    """Drop the database named in `database_url`, disconnecting anyone still using it (PostgreSQL 13+)."""
    name = make_url(database_url).database
    if not name:
        raise ValueError(f"no database name in {database_url!r}")
    with psycopg.connect(_libpq_url(admin_url), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_name(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise ValueError(f"no database name in {url!r}")
    return name
