"""Calls and their turns: written by call sessions, read by the transcript API."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from agent.transcript import TurnRecord
from crm.db import IMMEDIATE
from crm.models import Call, Customer, Turn

# How far along a call is, per status: a callback may only move a call forward. Twilio sends each progress
# event as its own HTTP request, so they can arrive out of order, and it retries; the ranks make a late
# `ringing` after `in-progress`, or a second `completed`, change nothing. Final statuses share one rank:
# the first one reported stands.
_STATUS_RANK = {
    "queued": 0,
    "initiated": 0,
    "ringing": 1,
    "in-progress": 2,
    "completed": 3,
    "busy": 3,
    "no-answer": 3,
    "failed": 3,
    "canceled": 3,
}
FINAL_RANK = 3

_T = TypeVar("_T")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CallLog:
    """The CRM side of `agent.transcript.TranscriptSink` (synchronous: run it off the event loop)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """A transaction that reads then writes: on SQLite it takes the write lock up front (see crm.db),
        since several calls and the workers write concurrently."""
        with self._sessions.begin() as session:
            session.connection(execution_options=IMMEDIATE)
            yield session

    def _write_call(self, work: Callable[[Session], _T]) -> _T:
        """Run `work` in a transaction, once more if a concurrent writer inserted the same call first."""
        try:
            with self._writing() as session:
                return work(session)
        except IntegrityError:
            with self._writing() as session:
                return work(session)

    def start_call(
        self, call_id: str, *, from_number: str, to_uri: str, customer_id: int | None, transport: str
    ) -> None:
        def work(session: Session) -> None:
            call = session.get(Call, call_id)
            if call is None:
                session.add(
                    Call(
                        id=call_id,
                        from_number=from_number,
                        to_uri=to_uri,
                        customer_id=customer_id,
                        transport=transport,
                        started_at=_utc_now(),
                        status="in-progress",
                        status_at=_utc_now(),
                    )
                )
                return
            # A status callback (or the voice webhook) may have created the row before the agent started.
            if call.customer_id is None:
                call.customer_id = customer_id
            call.from_number = call.from_number or from_number
            call.to_uri = call.to_uri or to_uri
            call.transport = transport
            _advance(call, "in-progress", _utc_now())

        self._write_call(work)

    def add_turn(self, call_id: str, turn: TurnRecord) -> None:
        with self._writing() as session:
            index = session.scalar(select(func.count()).select_from(Turn).where(Turn.call_id == call_id)) or 0
            session.add(
                Turn(
                    call_id=call_id,
                    index=index,
                    speaker=turn.speaker,
                    text=turn.text,
                    started_at=_utc_now(),
                    stt_ms=turn.stt_ms,
                    e2e_ms=turn.e2e_ms,
                    intent=turn.intent,
                    telemetry=json.dumps(turn.telemetry, sort_keys=True) if turn.telemetry else None,
                )
            )

    def end_call(self, call_id: str, hangup_by: str | None) -> None:
        with self._writing() as session:
            call = session.get(Call, call_id)
            if call is None:
                return
            # Twilio's `completed` callback can come first and set ended_at; who hung up is only known here.
            if call.ended_at is None:
                call.ended_at = _utc_now()
            if call.hangup_by is None:
                call.hangup_by = hangup_by
            _advance(call, "completed", call.ended_at)

    def record_status(
        self,
        call_id: str,
        status: str,
        *,
        from_number: str | None = None,
        to: str | None = None,
        direction: str | None = None,
        duration_s: int | None = None,
        answered_by: str | None = None,
        at: dt.datetime | None = None,
    ) -> bool:
        """Record a carrier status report (Twilio status callback); True if it changed the call.

        Idempotent and order-insensitive: see `_STATUS_RANK`. A report about a call we have not seen yet
        (an outbound call ringing, or a callback ahead of the media stream) creates its row.
        """
        if status not in _STATUS_RANK:
            raise ValueError(f"unknown call status {status!r}")
        moment = at or _utc_now()

        def work(session: Session) -> bool:
            call = session.get(Call, call_id)
            if call is None:
                call = Call(
                    id=call_id,
                    from_number=from_number or "",
                    to_uri=to or "",
                    transport="twilio",
                    started_at=moment,
                    direction=direction,
                )
                session.add(call)
            changed = False
            if direction and call.direction is None:
                call.direction = direction
                changed = True
            if answered_by and call.answered_by is None:
                call.answered_by = answered_by
                changed = True
            if duration_s is not None and call.duration_s is None:
                call.duration_s = duration_s
                changed = True
            if _advance(call, status, moment):
                changed = True
                if _STATUS_RANK[status] == FINAL_RANK and call.ended_at is None:
                    # The carrier says the call is over; the media side records who hung up, if it ran.
                    call.ended_at = moment
            return changed

        return self._write_call(work)

    def transcript(self, call_id: str) -> dict[str, Any] | None:
        with self._sessions() as session:
            call = session.get(Call, call_id)
            if call is None:
                return None
            customer = session.get(Customer, call.customer_id) if call.customer_id is not None else None
            turns = session.scalars(select(Turn).where(Turn.call_id == call_id).order_by(Turn.index)).all()
            return {
                "call_id": call.id,
                "from": call.from_number,
                "to": call.to_uri,
                "customer": customer.name if customer is not None else None,
                "transport": call.transport,
                "started_at": call.started_at.isoformat(),
                "ended_at": call.ended_at.isoformat() if call.ended_at else None,
                "hangup_by": call.hangup_by,
                "status": call.status,
                "direction": call.direction,
                "duration_s": call.duration_s,
                "answered_by": call.answered_by,
                "turns": [
                    {
                        "index": t.index,
                        "speaker": t.speaker,
                        "text": t.text,
                        "intent": t.intent,
                        "stt_ms": t.stt_ms,
                        "e2e_ms": t.e2e_ms,
                        "telemetry": json.loads(t.telemetry) if t.telemetry else None,
                    }
                    for t in turns
                ],
            }


def _advance(call: Call, status: str, at: dt.datetime) -> bool:
    """Move the call to `status` if that is progress; False (and no change) otherwise."""
    current = _STATUS_RANK.get(call.status, -1) if call.status is not None else -1
    if _STATUS_RANK[status] <= current:
        return False
    call.status = status
    call.status_at = at
    return True
