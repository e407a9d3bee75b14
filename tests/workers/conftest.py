"""Fixtures shared by the workers' fault tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers.postgres_server import PrivatePostgres


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own (initdb, private port) that the test may stop and start.

    Its directory is not under pytest's tmp_path: another pytest run starting meanwhile resets the
    permissions of pytest's temporary root, and the `postgres` account could no longer reach its data.
    """
    directory = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    directory.chmod(0o755)
    server = PrivatePostgres(directory / "pg")
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop_if_running()
        shutil.rmtree(directory, ignore_errors=True)
