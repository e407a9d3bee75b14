"""Calls and their turns: written by call sessions, read by the transcript API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agent.transcript import TurnRecord
from crm.models import Call, Customer, Turn


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CallLog:
    """The CRM side of `agent.transcript.TranscriptSink` (synchronous: run it off the event loop)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def start_call(
        self, call_id: str, *, from_number: str, to_uri: str, customer_id: int | None, transport: str
    ) -> None:
        with self._sessions.begin() as session:
            if session.get(Call, call_id) is None:
                session.add(
                    Call(
                        id=call_id,
                        from_number=from_number,
                        to_uri=to_uri,
                        customer_id=customer_id,
                        transport=transport,
                        started_at=_utc_now(),
                    )
                )

    def add_turn(self, call_id: str, turn: TurnRecord) -> None:
        with self._sessions.begin() as session:
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
                )
            )

    def end_call(self, call_id: str, hangup_by: str | None) -> None:
        with self._sessions.begin() as session:
            call = session.get(Call, call_id)
            if call is not None and call.ended_at is None:
                call.ended_at = _utc_now()
                call.hangup_by = hangup_by

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
                "turns": [
                    {
                        "index": t.index,
                        "speaker": t.speaker,
                        "text": t.text,
                        "intent": t.intent,
                        "stt_ms": t.stt_ms,
                        "e2e_ms": t.e2e_ms,
                    }
                    for t in turns
                ],
            }
