"""Bookings against the bays: reading the schedule, finding free slots, creating and cancelling.

These functions run inside a transaction opened by the caller (tools.transactions) and take the
business-local "now" as an argument, so the clock stays injectable.
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.models import AuditLog, Booking, Business, Closure, Customer, OpeningHours, Service
from tools.api import (
    BookingInfo,
    CrmUnavailable,
    InvalidRequest,
    NotFound,
    ServiceInfo,
    Slot,
    SlotUnavailable,
)
from tools.matching import best_match
from tools.scheduling import DaySchedule, OpenInterval, candidate_starts, fits_opening_hours, has_free_bay

# Statuses that hold a bay; a cancelled booking frees it.
OCCUPYING_STATUSES = ("held", "confirmed", "needs_review")


def load_business(session: Session) -> Business:
    business = session.scalars(select(Business).order_by(Business.id).limit(1)).first()
    if business is None:
        raise NotFound("no business is set up in this database")
    return business


def business_zone(business: Business) -> ZoneInfo:
    try:
        return ZoneInfo(business.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CrmUnavailable(f"the business time zone {business.timezone!r} is unknown") from exc


def business_local(instant: dt.datetime, business: Business) -> dt.datetime:
    """The business's wall-clock time for `instant`; a naive `instant` is taken as already local."""
    if instant.tzinfo is None:
        return instant
    return instant.astimezone(business_zone(business)).replace(tzinfo=None)


def weekly_intervals(session: Session) -> dict[int, tuple[OpenInterval, ...]]:
    weekly: dict[int, list[OpenInterval]] = {}
    for row in session.scalars(select(OpeningHours).order_by(OpeningHours.weekday, OpeningHours.opens)):
        weekly.setdefault(row.weekday, []).append(OpenInterval(row.opens, row.closes))
    return {weekday: tuple(intervals) for weekday, intervals in weekly.items()}


def day_schedule(session: Session, day: dt.date) -> DaySchedule:
    rows = session.scalars(
        select(OpeningHours).where(OpeningHours.weekday == day.weekday()).order_by(OpeningHours.opens)
    )
    intervals = tuple(OpenInterval(row.opens, row.closes) for row in rows)
    closure = session.scalars(select(Closure).where(Closure.date == day)).first()
    return DaySchedule(day, intervals, None if closure is None else (closure.reason or "closed"))


def service_info(service: Service) -> ServiceInfo:
    return ServiceInfo(
        id=service.id, name=service.name, duration_min=service.duration_min, price=service.price
    )


def active_services(session: Session) -> list[Service]:
    return list(session.scalars(select(Service).where(Service.active).order_by(Service.name)))


def resolve_service(session: Session, spoken: str) -> Service:
    """The active service the caller named ("an oil change", "brake inspections"); InvalidRequest if none."""
    services = active_services(session)
    by_name = {service.name.lower(): service for service in services}
    exact = by_name.get(" ".join(spoken.lower().split()))
    if exact is not None:
        return exact
    match = best_match(spoken, ((service.id, [service.name]) for service in services))
    if match is None:
        offered = ", ".join(service.name for service in services)
        raise InvalidRequest(f"we do not offer {spoken!r}; services are: {offered}")
    return next(service for service in services if service.id == match)


def occupied_intervals(
    session: Session, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime]]:
    rows = session.execute(
        select(Booking.start, Booking.end).where(
            Booking.status.in_(OCCUPYING_STATUSES), Booking.start < end, Booking.end > start
        )
    )
    return [(row.start, row.end) for row in rows]


def free_slots(
    session: Session,
    business: Business,
    service: Service,
    day: dt.date,
    *,
    local_now: dt.datetime,
    after: dt.time | None,
) -> list[Slot]:
    schedule = day_schedule(session, day)
    duration = dt.timedelta(minutes=service.duration_min)
    not_before = local_now if after is None else max(local_now, dt.datetime.combine(day, after))
    starts = candidate_starts(schedule, duration, not_before=not_before)
    if not starts:
        return []
    booked = occupied_intervals(session, starts[0], starts[-1] + duration)
    return [
        Slot(service=service.name, start=start, end=start + duration)
        for start in starts
        if has_free_bay(booked, start, start + duration, business.bay_count)
    ]


def booking_info(booking: Booking, service_name: str) -> BookingInfo:
    return BookingInfo(
        id=booking.id,
        customer_id=booking.customer_id,
        service=service_name,
        start=booking.start,
        end=booking.end,
        status=booking.status,
    )


def create_booking(
    session: Session,
    business: Business,
    *,
    customer_id: int,
    service: Service,
    start: dt.datetime,
    local_now: dt.datetime,
    source_call_id: str | None,
    actor: str,
) -> BookingInfo:
    """Confirm a booking if the slot is open and a bay is free. The caller holds the booking lock."""
    if session.get(Customer, customer_id) is None:
        raise NotFound(f"no customer with id {customer_id}")
    end = start + dt.timedelta(minutes=service.duration_min)
    if start < local_now:
        raise SlotUnavailable(f"{start:%Y-%m-%d %H:%M} is in the past")
    schedule = day_schedule(session, start.date())
    if not schedule.is_open:
        raise SlotUnavailable(f"we are closed on {start:%A %Y-%m-%d}")
    if not fits_opening_hours(schedule, start, end):
        raise SlotUnavailable(f"a {service.name} at {start:%H:%M} would not finish within opening hours")
    if not has_free_bay(occupied_intervals(session, start, end), start, end, business.bay_count):
        raise SlotUnavailable(f"every bay is taken at {start:%Y-%m-%d %H:%M}")
    booking = Booking(
        customer_id=customer_id,
        service_id=service.id,
        start=start,
        end=end,
        status="confirmed",
        source_call_id=source_call_id,
    )
    session.add(booking)
    session.flush()
    detail = {"service": service.name, "start": start.isoformat(), "source_call_id": source_call_id}
    session.add(
        AuditLog(
            actor=actor,
            action="booking.create",
            entity="booking",
            entity_id=str(booking.id),
            detail=json.dumps(detail),
        )
    )
    return booking_info(booking, service.name)


def upcoming(session: Session, customer_id: int, local_now: dt.datetime) -> list[BookingInfo]:
    if session.get(Customer, customer_id) is None:
        raise NotFound(f"no customer with id {customer_id}")
    rows = session.execute(
        select(Booking, Service.name)
        .join(Service, Service.id == Booking.service_id)
        .where(
            Booking.customer_id == customer_id,
            Booking.status.in_(OCCUPYING_STATUSES),
            Booking.start >= local_now,
        )
        .order_by(Booking.start, Booking.id)
    )
    return [booking_info(booking, name) for booking, name in rows]


def cancel(session: Session, booking_id: int, *, local_now: dt.datetime, actor: str) -> BookingInfo:
    row = session.execute(
        select(Booking, Service.name)
        .join(Service, Service.id == Booking.service_id)
        .where(Booking.id == booking_id)
    ).first()
    if row is None:
        raise NotFound(f"no booking with id {booking_id}")
    booking, service_name = row
    if booking.status == "cancelled":
        return booking_info(booking, service_name)  # cancelling twice is harmless
    if booking.start < local_now:
        raise InvalidRequest("that booking has already started or taken place")
    booking.status = "cancelled"
    session.add(
        AuditLog(
            actor=actor,
            action="booking.cancel",
            entity="booking",
            entity_id=str(booking.id),
            detail=json.dumps({"start": booking.start.isoformat()}),
        )
    )
    session.flush()
    return booking_info(booking, service_name)
