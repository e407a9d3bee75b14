"""Delivering outbox messages to their destinations, once each, with retries and dead letters.

`OutboxCourier` is the same code whether a Celery task or the in-process runner calls it. It never
holds a database transaction open while a destination is being called: a slow webhook must not keep
row locks (or SQLite's write lock) from the calls that are booking right now.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from crm import outbox
from crm.db import IMMEDIATE
from crm.models import utc_now
from crm.outbox import PendingMessage
from workers.retry import RetryPolicy

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


class DeliveryError(Exception):
    """Base of the errors a destination reports."""


class DestinationUnavailable(DeliveryError):
    """The destination did not take the write this time (down, timed out, 5xx): retry later."""


class WriteRejected(DeliveryError):
    """The destination refused the write itself (4xx, unknown kind): retrying cannot help."""


class Destination(Protocol):
    """Applies one message; must be idempotent on `message.idempotency_key`."""

    def deliver(self, message: PendingMessage) -> None: ...


@contextmanager
def writing(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction that reads then writes: on SQLite it must take the write lock up front, because a
    deferred transaction that upgrades later fails at once with SQLITE_BUSY instead of waiting."""
    with sessions.begin() as session:
        session.connection(execution_options=IMMEDIATE)
        yield session


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    SKIPPED = "skipped"  # already delivered, dead, or unknown: a duplicate task
    DATABASE_DOWN = "database_down"  # the outbox itself is unreachable; the lease brings it back


class OutboxCourier:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        destinations: Mapping[str, Destination],
        *,
        policy: RetryPolicy,
        lease: dt.timedelta = dt.timedelta(seconds=30),
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = sessions
        self._destinations = dict(destinations)
        self._policy = policy
        self._lease = lease
        self._clock = clock
        self._rng = rng or random.Random()

    def claim_due(self, limit: int) -> list[int]:
        """Lease and return the ids of due messages (empty when the database is unreachable)."""
        try:
            with writing(self._sessions) as session:
                return outbox.claim_due(session, now=self._clock(), lease=self._lease, limit=limit)
        except sa_exc.SQLAlchemyError as exc:
            log.warning("outbox unreachable, nothing dispatched: %s", type(exc).__name__)
            return []

    def deliver(self, outbox_id: int) -> Outcome:
        try:
            with self._sessions() as session:
                message = outbox.load_pending(session, outbox_id)
        except sa_exc.SQLAlchemyError as exc:
            log.warning("outbox unreachable, message %s waits for its lease: %s", outbox_id, exc)
            return Outcome.DATABASE_DOWN
        if message is None:
            return Outcome.SKIPPED
        destination = self._destinations.get(message.destination)
        try:
            if destination is None:
                raise DestinationUnavailable(f"no {message.destination!r} destination is configured")
            destination.deliver(message)
        except WriteRejected as exc:
            return self._give_up(message, f"rejected: {exc}")
        except DestinationUnavailable as exc:
            return self._retry_later(message, str(exc))
        try:
            with writing(self._sessions) as session:
                outbox.mark_delivered(session, message.id, now=self._clock())
        except sa_exc.SQLAlchemyError:
            # Applied but not marked: it will be delivered again, and the idempotency key absorbs it.
            log.warning("delivered message %s but could not mark it", message.id)
            return Outcome.DATABASE_DOWN
        return Outcome.DELIVERED

    def _retry_later(self, message: PendingMessage, error: str) -> Outcome:
        attempts = message.attempts + 1
        try:
            with writing(self._sessions) as session:
                if self._policy.exhausted(attempts):
                    outbox.mark_failed(session, message.id, error=error, retry_at=self._clock())
                    outbox.bury(session, message.id, error=error)
                    log.error(
                        "message %s (%s) is dead after %d attempts: %s",
                        message.id,
                        message.kind,
                        attempts,
                        error,
                    )
                    return Outcome.DEAD
                delay = dt.timedelta(seconds=self._policy.delay_s(attempts, self._rng))
                outbox.mark_failed(session, message.id, error=error, retry_at=self._clock() + delay)
        except sa_exc.SQLAlchemyError:
            return Outcome.DATABASE_DOWN
        return Outcome.RETRY

    def _give_up(self, message: PendingMessage, error: str) -> Outcome:
        try:
            with writing(self._sessions) as session:
                outbox.mark_failed(session, message.id, error=error, retry_at=self._clock())
                outbox.bury(session, message.id, error=error)
        except sa_exc.SQLAlchemyError:
            return Outcome.DATABASE_DOWN
        log.error("message %s (%s) is dead: %s", message.id, message.kind, error)
        return Outcome.DEAD
