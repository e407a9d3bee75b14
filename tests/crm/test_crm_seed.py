"""The demo business facts other packages rely on, exactly."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import (
    Booking,
    Business,
    Customer,
    InventoryItem,
    KnowledgeArticle,
    OpeningHours,
    Order,
    Service,
)
from crm.seed import next_weekday_after, seed_demo_business
from crm.vocabulary import load_vocabulary
from tests.crm.databases import SEED_DAY


def test_business_and_hours(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        business = session.scalars(select(Business)).one()
        assert (business.name, business.address, business.bay_count) == (
            "Riverside Auto Care",
            "221 River Road",
            3,
        )
        hours = {row.weekday: (row.opens, row.closes) for row in session.scalars(select(OpeningHours))}
    weekday_hours = (dt.time(8), dt.time(18))
    assert hours == {0: weekday_hours, 1: weekday_hours, 2: weekday_hours, 3: weekday_hours, 4: weekday_hours,
                     5: (dt.time(9), dt.time(13))}  # fmt: skip


def test_services(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        services = {s.name: (s.duration_min, s.price, s.active) for s in session.scalars(select(Service))}
    assert services == {
        "oil change": (30, Decimal("49.00"), True),
        "tire rotation": (30, Decimal("35.00"), True),
        "brake inspection": (45, Decimal("79.00"), True),
        "battery replacement": (30, Decimal("120.00"), True),
        "full service": (120, Decimal("249.00"), True),
    }


def test_customers_orders_and_danas_booking(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        customers = {c.phone: c for c in session.scalars(select(Customer))}
        assert {phone: c.name for phone, c in customers.items()} == {
            "+15550100001": "Dana Whitfield",
            "+15550100002": "Marcus Lee",
            "+15550100003": "Priya Raman",
        }
        orders = {o.number: (o.customer_id, o.description, o.status) for o in session.scalars(select(Order))}
        assert orders == {
            "A1042": (customers["+15550100001"].id, "front brake pads", "ready for pickup"),
            "B2077": (customers["+15550100002"].id, "battery 24F", "on backorder"),
        }
        booking, service_name = session.execute(
            select(Booking, Service.name).join(Service, Service.id == Booking.service_id)
        ).one()
    assert booking.customer_id == customers["+15550100001"].id
    assert service_name == "tire rotation"
    assert booking.status == "confirmed"
    assert SEED_DAY.weekday() == 2
    assert (booking.start, booking.end) == (dt.datetime(2026, 11, 19, 9, 0), dt.datetime(2026, 11, 19, 9, 30))


def test_inventory(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        items = {i.sku: i for i in session.scalars(select(InventoryItem))}
    assert {sku: (i.name, i.quantity, i.price) for sku, i in items.items()} == {
        "WB-22": ("wiper blades 22 inch", 14, Decimal("18.99")),
        "BP-F100": ("front brake pads", 0, Decimal("64.50")),
        "BAT-24F": ("battery group 24F", 5, Decimal("139.00")),
        "OIL-5W30": ("synthetic oil 5W-30 5 quart", 40, Decimal("32.00")),
        "TIR-2055516": ("tire 205/55R16", 8, Decimal("96.00")),
    }
    assert {"wiper blades", "wipers", "windshield wipers"} <= set(items["WB-22"].alias_list)
    assert {"brake pads", "front brake pads"} <= set(items["BP-F100"].alias_list)
    assert {"battery", "car battery", "twenty four f battery"} <= set(items["BAT-24F"].alias_list)
    assert {"synthetic oil", "motor oil", "oil"} <= set(items["OIL-5W30"].alias_list)
    assert {"tires", "tire", "two oh five fifty five sixteen"} <= set(items["TIR-2055516"].alias_list)


def test_knowledge_articles(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        articles = {a.slug: a.body for a in session.scalars(select(KnowledgeArticle))}
    assert set(articles) == {"hours", "address", "cancellation-policy", "payment-methods"}
    assert "Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM, closed Sunday" in articles["hours"]
    assert "221 River Road" in articles["address"]


def test_seeding_twice_changes_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        assert seed_demo_business(session, SEED_DAY) is False
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Business)) == 1
        assert session.scalar(select(func.count()).select_from(Customer)) == 3
        assert session.scalar(select(func.count()).select_from(Booking)) == 1


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (dt.date(2026, 11, 18), dt.date(2026, 11, 19)),  # Wednesday -> Thursday
        (dt.date(2026, 11, 20), dt.date(2026, 11, 23)),  # Friday -> Monday
        (dt.date(2026, 11, 21), dt.date(2026, 11, 23)),  # Saturday -> Monday
        (dt.date(2026, 11, 22), dt.date(2026, 11, 23)),  # Sunday -> Monday
    ],
)
def test_next_weekday_after(today: dt.date, expected: dt.date) -> None:
    assert next_weekday_after(today) == expected


def test_vocabulary(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        vocabulary = load_vocabulary(session)
    assert vocabulary.business_name == "Riverside Auto Care"
    assert vocabulary.services == (
        "oil change",
        "tire rotation",
        "brake inspection",
        "battery replacement",
        "full service",
    )
    assert {"wiper blades", "wipers", "brake pads", "twenty four f battery", "motor oil", "tires"} <= set(
        vocabulary.products
    )
    assert all(product == product.lower() for product in vocabulary.products)
    assert len(set(vocabulary.products)) == len(vocabulary.products)
    assert vocabulary.customer_names == ("dana whitfield", "marcus lee", "priya raman")
    assert vocabulary.order_numbers == ("A1042", "B2077")
