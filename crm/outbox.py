"""The transactional outbox: writes decided during a call, stored with the call's own commit.

A write is recorded (`record`) inside the transaction that tells the caller it is done, so the two
commit or fail together; a worker then delivers it (workers.delivery) and marks it delivered, retried
or dead. Every message carries an idempotency key that the destination checks, so delivering a message
twice (a lost acknowledgement, a redelivered task) applies it once.

The backoff schedule lives in the database (`next_attempt_at`), not in the broker: a broker restart or
a killed worker loses at most a task, never the fact that a write is still owed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from crm.models import OUTBOX_DESTINATIONS, DeadLetter, OutboxMessage, utc_now


def idempotency_key(*parts: object) -> str:
    """A stable key for a write from what identifies it (call id, intent, arguments)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()
    return f"sb-{digest[:40]}"


@dataclass(frozen=True, slots=True)
class OutboxWrite:
    """A write waiting to be recorded: what it is, where it goes, and the key that makes it apply once."""

    kind: str
    destination: str
    payload: Mapping[str, Any]
    idempotency_key: str

    def __post_init__(self) -> None:
        if self.destination not in OUTBOX_DESTINATIONS:
            raise ValueError(f"unknown outbox destination {self.destination!r}")

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "destination": self.destination,
                "payload": dict(self.payload),
                "idempotency_key": self.idempotency_key,
            },
            default=str,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> OutboxWrite:
        data = json.loads(text)
        return cls(
            kind=str(data["kind"]),
            destination=str(data["destination"]),
            payload=dict(data["payload"]),
            idempotency_key=str(data["idempotency_key"]),
        )


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An outbox row as a worker sees it, detached from the session it was read in."""

    id: int
    idempotency_key: str
    kind: str
    destination: str
    payload: dict[str, Any] = field(hash=False)
    attempts: int
    created_at: dt.datetime


def record(session: Session, write: OutboxWrite, *, now: dt.datetime | None = None) -> OutboxMessage:
    """Add `write` to the caller's open transaction; it is durable when that transaction commits."""
    instant = now or utc_now()
    message = OutboxMessage(
        idempotency_key=write.idempotency_key,
        kind=write.kind,
        destination=write.destination,
        payload=json.dumps(dict(write.payload), default=str, sort_keys=True),
        status="pending",
        attempts=0,
        created_at=instant,
        next_attempt_at=instant,
    )
    session.add(message)
    return message


def record_once(session: Session, write: OutboxWrite) -> bool:
    """Record `write` unless its key is already there (spool replays); True if it was added."""
    existing = session.scalar(
        select(OutboxMessage.id).where(OutboxMessage.idempotency_key == write.idempotency_key)
    )
    if existing is not None:
        return False
    record(session, write)
    return True


def claim_due(session: Session, *, now: dt.datetime, lease: dt.timedelta, limit: int) -> list[int]:
    """Ids of pending messages that are due, leased for `lease` so nobody else hands them out meanwhile.

    If the worker that gets one dies, the lease runs out and the message is due again.
    """
    query = (
        select(OutboxMessage.id)
        .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Two dispatchers (a beat and an operator's manual run) must not hand out the same rows.
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(next_attempt_at=now + lease)
        )
    return ids


def load_pending(session: Session, outbox_id: int) -> PendingMessage | None:
    message = session.get(OutboxMessage, outbox_id)
    if message is None or message.status != "pending":
        return None
    return PendingMessage(
        id=message.id,
        idempotency_key=message.idempotency_key,
        kind=message.kind,
        destination=message.destination,
        payload=json.loads(message.payload),
        attempts=message.attempts,
        created_at=message.created_at,
    )


def mark_delivered(session: Session, outbox_id: int, *, now: dt.datetime) -> None:
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, OutboxMessage.status == "pending")
        .values(status="delivered", delivered_at=now, last_error=None)
    )


def mark_failed(session: Session, outbox_id: int, *, error: str, retry_at: dt.datetime) -> int:
    """Count a failed attempt and schedule the next; returns the attempts made so far."""
    message = session.get(OutboxMessage, outbox_id)
    if message is None or message.status != "pending":
        return 0
    message.attempts += 1
    message.last_error = error
    message.next_attempt_at = retry_at
    return message.attempts


def bury(session: Session, outbox_id: int, *, error: str) -> DeadLetter | None:
    """Give up on a message: it stays in the outbox as dead, and a dead letter says why."""
    message = session.get(OutboxMessage, outbox_id)
    if message is None or message.status != "pending":
        return None
    message.status = "dead"
    message.last_error = error
    letter = DeadLetter(
        outbox_id=message.id,
        idempotency_key=message.idempotency_key,
        kind=message.kind,
        destination=message.destination,
        attempts=message.attempts,
        last_error=error,
    )
    session.add(letter)
    session.flush()
    return letter


class ReplayRefused(Exception):
    """The dead letter cannot be replayed (unknown, or replayed already)."""


def replay(session: Session, dead_letter_id: int, *, now: dt.datetime | None = None) -> OutboxMessage:
    """Put a dead letter's message back in the outbox with a fresh retry budget (same idempotency key)."""
    instant = now or utc_now()
    letter = session.get(DeadLetter, dead_letter_id)
    if letter is None:
        raise ReplayRefused(f"no dead letter with id {dead_letter_id}")
    if letter.replayed_at is not None:
        raise ReplayRefused(f"dead letter {dead_letter_id} was replayed at {letter.replayed_at.isoformat()}")
    message = session.get(OutboxMessage, letter.outbox_id)
    if message is None:
        raise ReplayRefused(f"the message of dead letter {dead_letter_id} is gone")
    letter.replayed_at = instant
    message.status = "pending"
    message.attempts = 0
    message.next_attempt_at = instant
    return message


def dead_letters(session: Session, *, include_replayed: bool = False) -> Sequence[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.id)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    return session.scalars(query).all()
