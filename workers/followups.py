"""Work after a call that nobody waits for: the post-call summary and analytics events.

Both become outbox messages for the external CRM (when one is configured), so they get the same
retries, idempotency and dead letters as bookings.
"""

from __future__ import annotations

import collections
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from crm import outbox
from crm.calls import CallLog
from crm.db import IMMEDIATE
from crm.outbox import OutboxWrite


def call_summary(transcript: dict[str, Any]) -> dict[str, Any]:
    """A short, deterministic summary of a logged call: who, how long, what was asked, how it ended."""
    turns = transcript["turns"]
    intents = collections.Counter(t["intent"] for t in turns if t["intent"])
    caller_lines = [t["text"] for t in turns if t["speaker"] == "caller"]
    agent_lines = [t["text"] for t in turns if t["speaker"] == "agent"]
    return {
        "call_id": transcript["call_id"],
        "from": transcript["from"],
        "customer": transcript["customer"],
        "started_at": transcript["started_at"],
        "ended_at": transcript["ended_at"],
        "hangup_by": transcript["hangup_by"],
        "caller_turns": len(caller_lines),
        "intents": sorted(intents),
        "outcome": agent_lines[-1] if agent_lines else "",
    }


def record_call_summary(sessions: sessionmaker[Session], call_id: str) -> bool:
    """Queue the summary of `call_id` for the external CRM; False if the call is not logged."""
    transcript = CallLog(sessions).transcript(call_id)
    if transcript is None:
        return False
    write = OutboxWrite(
        kind="call.summary",
        destination="external",
        payload=call_summary(transcript),
        idempotency_key=outbox.idempotency_key("call.summary", call_id),
    )
    with sessions.begin() as session:
        session.connection(execution_options=IMMEDIATE)
        outbox.record_once(session, write)
    return True


def record_analytics_event(
    sessions: sessionmaker[Session], name: str, properties: dict[str, Any], event_id: str
) -> bool:
    write = OutboxWrite(
        kind="analytics.event",
        destination="external",
        payload={"event": name, "properties": properties},
        idempotency_key=outbox.idempotency_key("analytics.event", event_id),
    )
    with sessions.begin() as session:
        session.connection(execution_options=IMMEDIATE)
        return outbox.record_once(session, write)
