"""What a worker process needs, built once per process from `WorkerSettings`.

Built lazily: Celery's prefork pool forks children after importing the tasks, and a database engine
(its pooled sockets) must not be shared across a fork.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm.db import create_engine_for, session_factory
from workers.config import WorkerSettings
from workers.crm_writes import CrmWriteApplier
from workers.delivery import Destination, OutboxCourier
from workers.retry import RetryPolicy
from workers.spool import WriteSpool
from workers.webhook import ExternalCrmWebhook


@dataclass(frozen=True, slots=True)
class WorkerContext:
    settings: WorkerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    courier: OutboxCourier
    spool: WriteSpool

    @property
    def external_sync(self) -> bool:
        return self.settings.crm_webhook_url is not None

    @classmethod
    def build(cls, settings: WorkerSettings, *, engine: Engine | None = None) -> WorkerContext:
        engine = engine or create_engine_for(settings.resolved_database_url)
        sessions = session_factory(engine)
        destinations: dict[str, Destination] = {"crm": CrmWriteApplier(sessions)}
        if settings.crm_webhook_url is not None:
            secret = settings.crm_webhook_secret.get_secret_value() if settings.crm_webhook_secret else ""
            if not secret:
                raise ValueError(
                    "SWITCHBOARD_CRM_WEBHOOK_SECRET must be set with SWITCHBOARD_CRM_WEBHOOK_URL"
                )
            destinations["external"] = ExternalCrmWebhook(
                settings.crm_webhook_url, secret, timeout_s=settings.crm_webhook_timeout_s
            )
        policy = RetryPolicy(
            base_s=settings.retry_base_s, cap_s=settings.retry_cap_s, max_attempts=settings.retry_max_attempts
        )
        courier = OutboxCourier(
            sessions, destinations, policy=policy, lease=dt.timedelta(seconds=settings.outbox_lease_s)
        )
        return cls(settings, engine, sessions, courier, WriteSpool(settings.resolved_spool_dir))


_lock = threading.Lock()
_current: WorkerContext | None = None


def current_context() -> WorkerContext:
    """This process's context, built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = WorkerContext.build(WorkerSettings())
        return _current
