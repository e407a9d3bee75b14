"""Fixtures shared by the workers' fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers.postgres_server import PrivatePostgres


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own (initdb, private port) that the test may stop and start."""
    server = PrivatePostgres(tmp_path / "pg")
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop_if_running()
