"""Alembic migrations up and down on SQLite and PostgreSQL, and agreement with the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from crm.db import create_engine_for
from crm.migrate import MIGRATIONS_DIR, current_revision, downgrade_to_base, head_revision, upgrade_to_head
from crm.models import Base
from crm.search import is_full_text_object

EXPECTED_TABLES = {
    "businesses",
    "opening_hours",
    "closures",
    "services",
    "customers",
    "bookings",
    "orders",
    "inventory_items",
    "knowledge_articles",
    "calls",
    "turns",
    "tool_invocations",
    "audit_log",
    "admin_users",
    "outbox_messages",
    "applied_writes",
    "dead_letters",
}


def _tables(url: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        # The SQLite FTS5 index and its shadow tables are not models (see revision 0003).
        return {name for name in inspect(engine).get_table_names() if not is_full_text_object(name)}
    finally:
        engine.dispose()


def test_upgrade_creates_schema_and_downgrade_removes_it(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None

    upgrade_to_head(empty_database_url)
    assert _tables(empty_database_url) == EXPECTED_TABLES | {"alembic_version"}
    assert current_revision(empty_database_url) == head_revision()

    engine = create_engine_for(empty_database_url)
    try:
        inspector = inspect(engine)
        booking_indexes = {tuple(index["column_names"]) for index in inspector.get_indexes("bookings")}
        assert {("start",), ("customer_id",), ("status", "start"), ("service_id", "start")} <= booking_indexes
        turn_indexes = {
            tuple(index["column_names"]): index["unique"] for index in inspector.get_indexes("turns")
        }
        assert turn_indexes[("call_id", "index")]
        assert {column["name"] for column in inspector.get_columns("calls")} >= {
            "id",
            "from_number",
            "to_uri",
            "customer_id",
            "started_at",
            "ended_at",
            "hangup_by",
            "transport",
        }
    finally:
        engine.dispose()

    downgrade_to_base(empty_database_url)
    assert _tables(empty_database_url) == {"alembic_version"}
    assert current_revision(empty_database_url) is None

    # The round trip leaves a database that migrates again cleanly.
    upgrade_to_head(empty_database_url)
    assert _tables(empty_database_url) == EXPECTED_TABLES | {"alembic_version"}


def test_migrated_schema_matches_models(empty_database_url: str) -> None:
    upgrade_to_head(empty_database_url)
    engine = create_engine_for(empty_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, parent: not is_full_text_object(name or ""),
                },
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_alembic_command_line_takes_url_from_environment(tmp_path: Path) -> None:
    """The shipped alembic.ini works from any directory, with the URL in SWITCHBOARD_DATABASE_URL."""
    database = tmp_path / "cli" / "crm.sqlite3"
    checkout = MIGRATIONS_DIR.parent
    env = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": f"sqlite:///{database}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")])),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(MIGRATIONS_DIR / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert current_revision(f"sqlite:///{database}") == head_revision()
    assert _tables(f"sqlite:///{database}") >= EXPECTED_TABLES
