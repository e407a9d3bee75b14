"""Alembic environment for the CRM schema (SQLite and PostgreSQL).

The database URL is `sqlalchemy.url` from the Alembic config when set (crm.migrate sets it), else the
`SWITCHBOARD_DATABASE_URL` environment variable. The engine comes from `crm.db.create_engine_for`, so
migrations run with the same SQLite pragmas and explicit BEGIN as the application; that makes SQLite
DDL transactional too, so a failed revision rolls back whole on both databases.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from crm.db import create_engine_for, is_sqlite, normalise_url
from crm.models import Base

DATABASE_URL_ENV = "SWITCHBOARD_DATABASE_URL"

config = context.config

# Only the command line loads logging from alembic.ini; an embedding application keeps its own logging.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise RuntimeError(f"no database URL: set sqlalchemy.url or {DATABASE_URL_ENV}")
    return url


def _configure(connection: Connection) -> None:
    sqlite = is_sqlite(connection.engine)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; autogenerate must emit batch (copy-and-move) operations.
        render_as_batch=sqlite,
        transactional_ddl=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`)."""
    url = normalise_url(_database_url())
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        render_as_batch=url.get_backend_name() == "sqlite",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine_for(_database_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
