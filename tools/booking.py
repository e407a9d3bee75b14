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


# A booking fits within one day's opening hours, so it starts less than this before anything it overlaps.
# The bound turns "start < end" (every booking in history) into a short range scan of ix_bookings_start.
MAX_BOOKING_LENGTH = dt.timedelta(days=1)


def occupied_intervals(
    session: Session, start: dt.datetime, end: dt.datetime, *, ignoring: int | None = None
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Bay-holding bookings overlapping [start, end); `ignoring` leaves one out (the one being moved)."""
    query = select(Booking.start, Booking.end).where(
        Booking.status.in_(OCCUPYING_STATUSES),
        Booking.start < end,
        Booking.start > start - MAX_BOOKING_LENGTH,
        Booking.end > start,
    )
    if ignoring is not None:
        query = query.where(Booking.id != ignoring)
    return [(row.start, row.end) for row in session.execute(query)]


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


def check_bookable(
    session: Session,
    business: Business,
    service: Service,
    start: dt.datetime,
    *,
    local_now: dt.datetime,
    ignoring: int | None = None,
) -> dt.datetime:
    """The end of a `service` booking at `start`, or SlotUnavailable saying why it cannot be had."""
    end = start + dt.timedelta(minutes=service.duration_min)
    if start < local_now:
        raise SlotUnavailable(f"{start:%Y-%m-%d %H:%M} is in the past")
    schedule = day_schedule(session, start.date())
    if not schedule.is_open:
        raise SlotUnavailable(f"we are closed on {start:%A %Y-%m-%d}")
    if not fits_opening_hours(schedule, start, end):
        raise SlotUnavailable(f"a {service.name} at {start:%H:%M} would not finish within opening hours")
    booked = occupied_intervals(session, start, end, ignoring=ignoring)
    if not has_free_bay(booked, start, end, business.bay_count):
        raise SlotUnavailable(f"every bay is taken at {start:%Y-%m-%d %H:%M}")
    return end


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
    end = check_bookable(session, business, service, start, local_now=local_now)
    booking = insert_booking(
        session,
        customer_id=customer_id,
        service=service,
        start=start,
        end=end,
        status="confirmed",
        source_call_id=source_call_id,
        actor=actor,
        action="booking.create",
        detail={"source_call_id": source_call_id},
    )
    return booking_info(booking, service.name)


def insert_booking(
    session: Session,
    *,
    customer_id: int,
    service: Service,
    start: dt.datetime,
    end: dt.datetime,
    status: str,
    source_call_id: str | None,
    actor: str,
    action: str,
    detail: dict[str, object],
) -> Booking:
    """Add a booking row and its audit entry (no capacity check: the caller decided the status)."""
    booking = Booking(
        customer_id=customer_id,
        service_id=service.id,
        start=start,
        end=end,
        status=status,
        source_call_id=source_call_id,
    )
    session.add(booking)
    session.flush()
    audit = {"service": service.name, "start": start.isoformat(), **detail}
    session.add(
        AuditLog(
            actor=actor, action=action, entity="booking", entity_id=str(booking.id), detail=json.dumps(audit)
        )
    )
    return booking


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


def _booking_with_service(session: Session, booking_id: int) -> tuple[Booking, Service]:
    row = session.execute(
        select(Booking, Service)
        .join(Service, Service.id == Booking.service_id)
        .where(Booking.id == booking_id)
    ).first()
    if row is None:
        raise NotFound(f"no booking with id {booking_id}")
    return row[0], row[1]


def get_booking(session: Session, booking_id: int) -> BookingInfo:
    booking, service = _booking_with_service(session, booking_id)
    return booking_info(booking, service.name)


def reschedule(
    session: Session,
    business: Business,
    booking_id: int,
    *,
    new_start: dt.datetime,
    local_now: dt.datetime,
    actor: str,
) -> BookingInfo:
    """Move a booking to `new_start`, keeping its service and status. The caller holds the booking lock."""
    booking, service = _booking_with_service(session, booking_id)
    if booking.status not in OCCUPYING_STATUSES:
        raise InvalidRequest("a cancelled booking cannot be moved; book a new one")
    if booking.start < local_now:
        raise InvalidRequest("that booking has already started or taken place")
    if new_start == booking.start:
        return booking_info(booking, service.name)
    new_end = check_bookable(session, business, service, new_start, local_now=local_now, ignoring=booking.id)
    detail = {"from": booking.start.isoformat(), "to": new_start.isoformat()}
    booking.start, booking.end = new_start, new_end
    session.add(
        AuditLog(
            actor=actor,
            action="booking.reschedule",
            entity="booking",
            entity_id=str(booking.id),
            detail=json.dumps(detail),
        )
    )
    session.flush()
    return booking_info(booking, service.name)
