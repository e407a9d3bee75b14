"""A local disk spool for writes decided while the database is unreachable.

One file per write, written to a temporary name, fsynced, renamed into place and the directory fsynced:
after `put` returns, the write survives a crash of the process or the machine, and a reader never sees
a half-written file. Draining copies each file into the outbox (keyed, so a crash between the insert
and the unlink only repeats an insert that `record_once` skips) and then deletes it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from crm.db import IMMEDIATE
from crm.outbox import OutboxWrite, record_once

log = logging.getLogger(__name__)

_SUFFIX = ".write.json"


class WriteSpool:
    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @property
    def directory(self) -> Path:
        return self._directory

    def put(self, write: OutboxWrite) -> Path:
        self._directory.mkdir(parents=True, exist_ok=True)
        # Time first, so draining applies writes in the order the calls made them.
        name = f"{time.time_ns():020d}-{write.idempotency_key}{_SUFFIX}"
        final = self._directory / name
        temporary = self._directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, write.to_json().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        directory_fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        return final

    def pending(self) -> list[Path]:
        if not self._directory.is_dir():
            return []
        return sorted(self._directory.glob(f"*{_SUFFIX}"))

    def drain(self, sessions: sessionmaker[Session]) -> int:
        """Move spooled writes into the outbox; stops at the first database error. Returns how many moved."""
        moved = 0
        for path in self.pending():
            try:
                write = OutboxWrite.from_json(path.read_text())
            except (ValueError, KeyError) as exc:
                # Never delete what we cannot read: set it aside for a person.
                log.error("unreadable spool file %s: %s", path, exc)
                path.rename(path.with_suffix(".unreadable"))
                continue
            try:
                with sessions.begin() as session:
                    session.connection(execution_options=IMMEDIATE)  # reads, then writes
                    record_once(session, write)
            except sa_exc.SQLAlchemyError as exc:
                log.info(
                    "database still unreachable, %d spooled writes wait: %s",
                    len(self.pending()),
                    type(exc).__name__,
                )
                return moved
            path.unlink()
            moved += 1
        return moved
