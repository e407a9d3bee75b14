"""Tool fixtures: the seeded CRM on SQLite and PostgreSQL (tests.crm.databases) and a toolbox on it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.crm.databases import WALL_CLOCK, backend, engine, migrated_database, sessions
from tools.toolbox import DatabaseToolBox

__all__ = ["backend", "engine", "migrated_database", "sessions", "toolbox"]


@pytest.fixture
def toolbox(sessions: sessionmaker[Session]) -> DatabaseToolBox:
    """A toolbox whose clock stands still at WALL_CLOCK (Wednesday 10:00, business-local)."""
    return DatabaseToolBox(sessions, now=lambda: WALL_CLOCK)
