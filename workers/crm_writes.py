"""The CRM database as an outbox destination: writes that could not be made during the call.

A call spools its write when the database is down (workers.spool); once the database is back the write
is recorded in the outbox with destination "crm" and applied here. The idempotency key is checked at
the destination: an `AppliedWrite` row is committed in the same transaction as the write, so a second
delivery finds it and does nothing.

A booking whose slot was taken while the write waited still lands, as `needs_review`: the caller was
told it was noted, so a person must sort it out rather than the write vanishing.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import AppliedWrite, AuditLog, Customer
from crm.outbox import PendingMessage
from tools import booking
from tools.api import CrmUnavailable, InvalidRequest, NotFound, SlotUnavailable, ToolError
from tools.transactions import CrmTransactions
from workers.delivery import DestinationUnavailable, WriteRejected

CRM_WRITE_KINDS = ("booking.create", "booking.cancel", "customer.create")


class CrmWriteApplier:
    """A `workers.delivery.Destination` that applies writes to the CRM database."""

    def __init__(self, sessions: sessionmaker[Session], *, timeout_s: float = 5.0) -> None:
        self._transactions = CrmTransactions(sessions, timeout_s=timeout_s)

    def deliver(self, message: PendingMessage) -> None:
        if message.kind not in CRM_WRITE_KINDS:
            raise WriteRejected(f"the CRM does not take {message.kind!r} writes")
        try:
            with self._transactions.writing(serialise_bookings=True) as session:
                if session.get(AppliedWrite, message.idempotency_key) is not None:
                    return
                result = self._apply(session, message)
                session.add(
                    AppliedWrite(
                        idempotency_key=message.idempotency_key,
                        kind=message.kind,
                        result=json.dumps(result, default=str, sort_keys=True),
                    )
                )
        except CrmUnavailable as exc:
            raise DestinationUnavailable(str(exc)) from exc
        except ToolError as exc:
            raise WriteRejected(f"{type(exc).__name__}: {exc}") from exc

    def _apply(self, session: Session, message: PendingMessage) -> dict[str, Any]:
        payload = message.payload
        actor = f"agent:{payload.get('source_call_id') or 'spool'}"
        if message.kind == "customer.create":
            return {"customer_id": _customer_for(session, payload, actor)}
        if message.kind == "booking.cancel":
            business = booking.load_business(session)
            local_now = booking.business_local(dt.datetime.now(dt.UTC), business)
            info = booking.cancel(session, int(payload["booking_id"]), local_now=local_now, actor=actor)
            return {"booking_id": info.id, "status": info.status}
        return _create_booking(session, payload, actor)


def _customer_for(session: Session, payload: dict[str, Any], actor: str) -> int:
    if payload.get("customer_id") is not None:
        return int(payload["customer_id"])
    phone = str(payload["phone"])
    existing = session.scalars(select(Customer).where(Customer.phone == phone)).first()
    if existing is not None:
        return existing.id
    customer = Customer(phone=phone, name=str(payload.get("name") or "Unknown caller"))
    session.add(customer)
    session.flush()
    session.add(
        AuditLog(
            actor=actor, action="customer.create", entity="customer", entity_id=str(customer.id), detail=phone
        )
    )
    return customer.id


def _create_booking(session: Session, payload: dict[str, Any], actor: str) -> dict[str, Any]:
    business = booking.load_business(session)
    service = booking.resolve_service(session, str(payload["service"]))
    # Spooled during the call, possibly as aware instants: the booking is on the business's wall clock.
    start = booking.business_local(dt.datetime.fromisoformat(str(payload["start"])), business)
    customer_id = _customer_for(session, payload, actor)
    source_call_id = payload.get("source_call_id")
    # The slot is judged as of when the caller asked, not when the database came back.
    decided = payload.get("decided_at")
    decided_at = start
    if decided:
        decided_at = booking.business_local(dt.datetime.fromisoformat(str(decided)), business)
    try:
        with session.begin_nested():
            info = booking.create_booking(
                session,
                business,
                customer_id=customer_id,
                service=service,
                start=start,
                local_now=min(decided_at, start),
                source_call_id=source_call_id,
                actor=actor,
            )
        return {"booking_id": info.id, "status": info.status}
    except SlotUnavailable as exc:
        reason = str(exc)
    except (InvalidRequest, NotFound):
        raise
    row = booking.insert_booking(
        session,
        customer_id=customer_id,
        service=service,
        start=start,
        end=start + dt.timedelta(minutes=service.duration_min),
        status="needs_review",
        source_call_id=source_call_id,
        actor=actor,
        action="booking.needs_review",
        detail={"reason": reason},
    )
    return {"booking_id": row.id, "status": "needs_review"}
