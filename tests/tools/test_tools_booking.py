"""Services, slots and bookings through DatabaseToolBox, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import AuditLog, Booking, Closure
from tools.api import InvalidRequest, NotFound, Slot, SlotUnavailable
from tools.toolbox import DatabaseToolBox

WEDNESDAY, THURSDAY, FRIDAY = dt.date(2026, 11, 18), dt.date(2026, 11, 19), dt.date(2026, 11, 20)
SATURDAY, SUNDAY = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
DANA, MARCUS, PRIYA = 1, 2, 3  # seeded customer ids


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def starts(slots: list[Slot]) -> list[dt.time]:
    return [slot.start.time() for slot in slots]


def test_list_services(toolbox: DatabaseToolBox) -> None:
    services = toolbox.list_services()
    assert [(s.name, s.duration_min, s.price) for s in services] == [
        ("battery replacement", 30, Decimal("120.00")),
        ("brake inspection", 45, Decimal("79.00")),
        ("full service", 120, Decimal("249.00")),
        ("oil change", 30, Decimal("49.00")),
        ("tire rotation", 30, Decimal("35.00")),
    ]


def test_weekday_slots_follow_opening_hours(toolbox: DatabaseToolBox) -> None:
    oil = toolbox.find_slots("oil change", THURSDAY)
    assert len(oil) == 20  # 08:00 .. 17:30, Dana's 09:00 rotation takes only one of three bays
    assert (oil[0].start, oil[0].end) == (at(THURSDAY, 8), at(THURSDAY, 8, 30))
    assert oil[-1].start == at(THURSDAY, 17, 30)
    assert all(slot.service == "oil change" for slot in oil)
    assert starts(toolbox.find_slots("full service", THURSDAY))[-1] == dt.time(16)


def test_saturday_sunday_and_closures(toolbox: DatabaseToolBox, sessions: sessionmaker[Session]) -> None:
    assert starts(toolbox.find_slots("oil change", SATURDAY)) == [
        dt.time(9), dt.time(9, 30), dt.time(10), dt.time(10, 30),
        dt.time(11), dt.time(11, 30), dt.time(12), dt.time(12, 30),
    ]  # fmt: skip
    assert starts(toolbox.find_slots("full service", SATURDAY))[-1] == dt.time(11)
    assert toolbox.find_slots("oil change", SUNDAY) == []
    assert toolbox.is_open(SATURDAY) and not toolbox.is_open(SUNDAY)

    with sessions.begin() as session:
        session.add(Closure(date=FRIDAY, reason="staff training"))
    assert toolbox.find_slots("oil change", FRIDAY) == []
    assert not toolbox.is_open(FRIDAY)
    assert toolbox.is_open(THURSDAY)


def test_no_slots_in_the_past(toolbox: DatabaseToolBox, sessions: sessionmaker[Session]) -> None:
    assert starts(toolbox.find_slots("oil change", WEDNESDAY))[0] == dt.time(10)  # now is 10:00
    late = DatabaseToolBox(sessions, now=lambda: at(WEDNESDAY, 10, 10))
    assert starts(late.find_slots("oil change", WEDNESDAY))[0] == dt.time(10, 30)
    assert toolbox.find_slots("oil change", dt.date(2026, 11, 17)) == []


def test_after_filters_slot_starts(toolbox: DatabaseToolBox) -> None:
    slots = toolbox.find_slots("oil change", THURSDAY, after=dt.time(14))
    assert starts(slots)[:2] == [dt.time(14), dt.time(14, 30)]
    assert starts(toolbox.find_slots("oil change", THURSDAY, after=dt.time(14, 10)))[0] == dt.time(14, 30)


def test_aware_clock_is_read_in_the_business_time_zone(sessions: sessionmaker[Session]) -> None:
    # 15:10 UTC is 10:10 in New York in November (EST, UTC-5).
    utc_box = DatabaseToolBox(sessions, now=lambda: dt.datetime(2026, 11, 18, 15, 10, tzinfo=dt.UTC))
    assert starts(utc_box.find_slots("oil change", WEDNESDAY))[0] == dt.time(10, 30)


def test_full_bays_hide_slots_and_cancelled_bookings_free_them(toolbox: DatabaseToolBox) -> None:
    booked = [toolbox.book(customer, "oil change", at(THURSDAY, 11)) for customer in (DANA, MARCUS, PRIYA)]
    assert all(b.status == "confirmed" for b in booked)
    oil = starts(toolbox.find_slots("oil change", THURSDAY))
    assert dt.time(11) not in oil
    assert dt.time(10, 30) in oil and dt.time(11, 30) in oil  # back to back with the full half hour
    # A 45-minute inspection at 10:30 would run into 11:00.
    assert dt.time(10, 30) not in starts(toolbox.find_slots("brake inspection", THURSDAY))

    with pytest.raises(SlotUnavailable, match="bay"):
        toolbox.book(DANA, "tire rotation", at(THURSDAY, 11))

    toolbox.cancel_booking(booked[0].id)
    assert dt.time(11) in starts(toolbox.find_slots("oil change", THURSDAY))
    assert toolbox.book(DANA, "tire rotation", at(THURSDAY, 11)).status == "confirmed"


def test_spoken_service_names_resolve(toolbox: DatabaseToolBox) -> None:
    assert toolbox.find_slots("an oil change", THURSDAY)[0].service == "oil change"
    assert toolbox.find_slots("Brake Inspections", THURSDAY)[0].service == "brake inspection"
    with pytest.raises(InvalidRequest, match="offer"):
        toolbox.find_slots("paint job", THURSDAY)
    with pytest.raises(InvalidRequest):
        toolbox.book(DANA, "paint job", at(THURSDAY, 11))


def test_book_records_the_booking_and_an_audit_row(
    toolbox: DatabaseToolBox, sessions: sessionmaker[Session]
) -> None:
    info = toolbox.book(PRIYA, "brake inspection", at(FRIDAY, 15, 30), source_call_id="call-1@pbx")
    assert (info.customer_id, info.service, info.start, info.end, info.status) == (
        PRIYA,
        "brake inspection",
        at(FRIDAY, 15, 30),
        at(FRIDAY, 16, 15),
        "confirmed",
    )
    with sessions() as session:
        row = session.get_one(Booking, info.id)
        assert (row.source_call_id, row.status) == ("call-1@pbx", "confirmed")
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "booking.create")).one()
    assert (audit.actor, audit.entity, audit.entity_id) == ("agent:call-1@pbx", "booking", str(info.id))
    assert json.loads(audit.detail)["service"] == "brake inspection"


@pytest.mark.parametrize(
    ("start", "service", "reason"),
    [
        (at(WEDNESDAY, 9), "oil change", "past"),
        (at(SUNDAY, 10), "oil change", "closed"),
        (at(THURSDAY, 17, 45), "oil change", "opening hours"),  # would end 18:15
        (at(SATURDAY, 12), "full service", "opening hours"),  # would end 14:00
        (at(THURSDAY, 7, 30), "oil change", "opening hours"),
    ],
)
def test_book_refuses_closed_or_past_times(
    toolbox: DatabaseToolBox, start: dt.datetime, service: str, reason: str
) -> None:
    with pytest.raises(SlotUnavailable, match=reason):
        toolbox.book(MARCUS, service, start)


def test_book_refuses_a_closure_day(toolbox: DatabaseToolBox, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(Closure(date=FRIDAY, reason="stock-take"))
    with pytest.raises(SlotUnavailable, match="closed"):
        toolbox.book(MARCUS, "oil change", at(FRIDAY, 10))


def test_book_unknown_customer(toolbox: DatabaseToolBox) -> None:
    with pytest.raises(NotFound):
        toolbox.book(999, "oil change", at(THURSDAY, 10))


def test_book_accepts_an_aware_start(toolbox: DatabaseToolBox) -> None:
    info = toolbox.book(MARCUS, "oil change", dt.datetime(2026, 11, 19, 16, 0, tzinfo=dt.UTC))
    assert info.start == at(THURSDAY, 11)  # New York wall clock


def test_upcoming_bookings_and_cancel(toolbox: DatabaseToolBox, sessions: sessionmaker[Session]) -> None:
    (dana_rotation,) = toolbox.upcoming_bookings(DANA)
    assert (dana_rotation.service, dana_rotation.start, dana_rotation.status) == (
        "tire rotation",
        at(THURSDAY, 9),
        "confirmed",
    )
    later = toolbox.book(DANA, "oil change", at(SATURDAY, 9))
    earlier = toolbox.book(DANA, "oil change", at(WEDNESDAY, 15))
    assert [b.id for b in toolbox.upcoming_bookings(DANA)] == [earlier.id, dana_rotation.id, later.id]
    assert toolbox.upcoming_bookings(PRIYA) == []

    cancelled = toolbox.cancel_booking(dana_rotation.id)
    assert cancelled.status == "cancelled"
    assert toolbox.cancel_booking(dana_rotation.id).status == "cancelled"  # twice is harmless
    assert [b.id for b in toolbox.upcoming_bookings(DANA)] == [earlier.id, later.id]

    with sessions() as session:
        assert session.get_one(Booking, dana_rotation.id).status == "cancelled"
        actions = session.scalars(select(AuditLog.action).where(AuditLog.entity_id == str(dana_rotation.id)))
        assert list(actions) == ["booking.cancel"]

    with pytest.raises(NotFound):
        toolbox.cancel_booking(999)
    with pytest.raises(NotFound):
        toolbox.upcoming_bookings(999)


def test_past_bookings_are_not_upcoming_and_cannot_be_cancelled(
    toolbox: DatabaseToolBox, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        past = Booking(
            customer_id=PRIYA,
            service_id=1,
            start=at(WEDNESDAY, 8),
            end=at(WEDNESDAY, 8, 30),
            status="confirmed",
        )
        session.add(past)
    assert toolbox.upcoming_bookings(PRIYA) == []
    with pytest.raises(InvalidRequest, match="already"):
        toolbox.cancel_booking(past.id)
