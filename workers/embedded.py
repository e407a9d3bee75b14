"""The worker side of `switchboard serve`: what the server starts, and what its calls write through.

Without `SWITCHBOARD_REDIS_URL` the runner delivers the outbox on a thread in the server (the embedded
default: nothing else to run). With it, Celery workers deliver and the runner only drains the disk
spool, which lives on the server's own disk.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from switchboard.config import Settings
from workers.config import WorkerSettings
from workers.context import WorkerContext
from workers.followups import record_call_summary
from workers.runner import OutboxRunner
from workers.spool import WriteSpool

log = logging.getLogger(__name__)


class EmbeddedWorkers:
    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self.runner = OutboxRunner(context, deliver=context.settings.redis_url is None)

    @classmethod
    def start(cls, settings: Settings, engine: Engine) -> EmbeddedWorkers:
        worker_settings = WorkerSettings.model_validate(settings.model_dump())
        workers = cls(WorkerContext.build(worker_settings, engine=engine))
        workers.runner.start()
        mode = "Celery workers" if worker_settings.redis_url else "in-process"
        log.info("outbox delivery: %s; spool at %s", mode, workers.spool.directory)
        return workers

    @property
    def external_sync(self) -> bool:
        return self.context.external_sync

    @property
    def spool(self) -> WriteSpool:
        return self.context.spool

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.context.sessions

    def wake(self) -> None:
        self.runner.wake()

    def after_call(self, call_id: str) -> None:
        """Queue the post-call summary for the external CRM (blocking: run it off the event loop)."""
        if not self.external_sync:
            return
        try:
            record_call_summary(self.sessions, call_id)
        except Exception:
            # A summary is a courtesy to the CRM; it must never fail the end of a call.
            log.exception("could not queue the summary of call %s", call_id)
        self.runner.wake()

    def stop(self) -> None:
        self.runner.stop()
