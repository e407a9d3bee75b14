"""CRM fixtures: empty databases for the migration tests, seeded ones (tests.crm.databases) for the rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crm.scratch import Backend, create_postgres_database, drop_postgres_database
from tests.crm.databases import BACKENDS, engine, migrated_database, require_postgres, sessions

__all__ = ["engine", "migrated_database", "sessions"]


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (for SQLite, not even its directory exists yet)."""
    backend: Backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'crm.sqlite3'}"
        return
    admin_url = require_postgres()
    url = create_postgres_database(admin_url, prefix="switchboard_test")
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, url)
