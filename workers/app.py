"""The Celery application on Redis: `celery -A workers.app worker` (or `switchboard worker`).

Delivery guarantees, and why each setting is here:
- `task_acks_late` + `task_reject_on_worker_lost`: a task is acknowledged after it ran, so a worker
  killed mid-task leaves it in the broker to be redelivered instead of silently dropped;
- `worker_prefetch_multiplier=1`: a killed worker strands at most one reserved task per process;
- the outbox in the database stays the source of truth: the beat's `dispatch_outbox` re-sends any message
  whose lease ran out, so a task lost with a restarted Redis is sent again; duplicates are harmless
  because destinations check the idempotency key.
"""

from __future__ import annotations

from celery import Celery  # type: ignore[import-untyped]

from workers.config import WorkerSettings

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def make_celery(settings: WorkerSettings) -> Celery:
    app = Celery("switchboard", broker=settings.redis_url or DEFAULT_REDIS_URL, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep reconnecting while Redis restarts
        # An unacknowledged task comes back after this long; the outbox lease is the shorter guarantee.
        broker_transport_options={"visibility_timeout": max(60.0, settings.outbox_lease_s * 4)},
        worker_hijack_root_logger=False,
        beat_schedule={
            "dispatch-outbox": {"task": "workers.tasks.dispatch_outbox", "schedule": settings.outbox_poll_s}
        },
    )
    return app


celery_app = make_celery(WorkerSettings())
