"""The demo business, Riverside Auto Care: the facts the demo calls, the tests and the docs rely on.

Change a fact here and tests across packages change meaning; add new facts rather than edit old ones.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.models import (
    AuditLog,
    Booking,
    Business,
    Customer,
    InventoryItem,
    KnowledgeArticle,
    OpeningHours,
    Order,
    Service,
)

BUSINESS_NAME = "Riverside Auto Care"
BUSINESS_ADDRESS = "221 River Road"
BUSINESS_PHONE = "+15550100000"
BUSINESS_TIMEZONE = "America/New_York"
BAY_COUNT = 3

# weekday (0 = Monday) -> (opens, closes); Sunday is absent, so closed.
WEEKLY_HOURS: dict[int, tuple[dt.time, dt.time]] = {
    **{weekday: (dt.time(8, 0), dt.time(18, 0)) for weekday in range(5)},
    5: (dt.time(9, 0), dt.time(13, 0)),
}


@dataclass(frozen=True, slots=True)
class DemoService:
    name: str
    duration_min: int
    price: Decimal


SERVICES = (
    DemoService("oil change", 30, Decimal("49.00")),
    DemoService("tire rotation", 30, Decimal("35.00")),
    DemoService("brake inspection", 45, Decimal("79.00")),
    # Labour only: the battery itself is sold from stock (BAT-24F...).
    DemoService("battery replacement", 30, Decimal("120.00")),
    DemoService("full service", 120, Decimal("249.00")),
)

DANA_PHONE = "+15550100001"
MARCUS_PHONE = "+15550100002"
PRIYA_PHONE = "+15550100003"
CUSTOMERS = ((DANA_PHONE, "Dana Whitfield"), (MARCUS_PHONE, "Marcus Lee"), (PRIYA_PHONE, "Priya Raman"))

# (number, customer phone, description, status)
ORDERS = (
    ("A1042", DANA_PHONE, "front brake pads", "ready for pickup"),
    ("B2077", MARCUS_PHONE, "battery 24F", "on backorder"),
)


@dataclass(frozen=True, slots=True)
class DemoItem:
    sku: str
    name: str
    quantity: int
    price: Decimal
    aliases: tuple[str, ...]


INVENTORY = (
    DemoItem(
        "WB-22",
        "wiper blades 22 inch",
        14,
        Decimal("18.99"),
        ("wiper blades", "wipers", "windshield wipers", "wiper blade", "twenty two inch wiper blades"),
    ),
    DemoItem(
        "BP-F100", "front brake pads", 0, Decimal("64.50"), ("brake pads", "front brake pads", "brake pad")
    ),
    DemoItem(
        "BAT-24F",
        "battery group 24F",
        5,
        Decimal("139.00"),
        ("battery", "car battery", "twenty four f battery", "group twenty four f battery"),
    ),
    DemoItem(
        "OIL-5W30",
        "synthetic oil 5W-30 5 quart",
        40,
        Decimal("32.00"),
        ("synthetic oil", "motor oil", "oil", "five w thirty oil", "five w thirty"),
    ),
    DemoItem(
        "TIR-2055516",
        "tire 205/55R16",
        8,
        Decimal("96.00"),
        ("tires", "tire", "two oh five fifty five sixteen", "sixteen inch tire"),
    ),
)

HOURS_TEXT = "Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM, closed Sunday"

# (slug, title, body)
KNOWLEDGE = (
    ("hours", "Opening hours", f"We are open {HOURS_TEXT}."),
    (
        "address",
        "Address and directions",
        f"{BUSINESS_NAME} is at {BUSINESS_ADDRESS}, next to the river bridge. Parking is in front of the "
        "service bays.",
    ),
    (
        "cancellation-policy",
        "Cancellation policy",
        "You can cancel or move a booking free of charge up to two hours before it starts. Later "
        "cancellations and missed appointments may be charged a twenty five dollar fee.",
    ),
    (
        "payment-methods",
        "Payment methods",
        "We accept cash, all major credit and debit cards, Apple Pay and Google Pay. We do not accept "
        "checks.",
    ),
)

DANA_BOOKING_SERVICE = "tire rotation"
DANA_BOOKING_TIME = dt.time(9, 0)


def next_weekday_after(today: dt.date) -> dt.date:
    """The first Monday-to-Friday date strictly after `today`."""
    day = today + dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def seed_demo_business(session: Session, today: dt.date) -> bool:
    """Insert the demo business when the database has none; True when it did. Does not commit."""
    if session.scalar(select(Business.id).limit(1)) is not None:
        return False
    session.add(
        Business(
            name=BUSINESS_NAME,
            address=BUSINESS_ADDRESS,
            phone=BUSINESS_PHONE,
            timezone=BUSINESS_TIMEZONE,
            bay_count=BAY_COUNT,
        )
    )
    session.add_all(
        OpeningHours(weekday=weekday, opens=opens, closes=closes)
        for weekday, (opens, closes) in sorted(WEEKLY_HOURS.items())
    )
    services = {
        spec.name: Service(name=spec.name, duration_min=spec.duration_min, price=spec.price, active=True)
        for spec in SERVICES
    }
    session.add_all(services.values())
    customers = {phone: Customer(phone=phone, name=name) for phone, name in CUSTOMERS}
    session.add_all(customers.values())
    session.flush()

    session.add_all(
        Order(number=number, customer_id=customers[phone].id, description=description, status=status)
        for number, phone, description, status in ORDERS
    )
    session.add_all(
        InventoryItem(
            sku=item.sku,
            name=item.name,
            aliases=", ".join(item.aliases),
            quantity=item.quantity,
            price=item.price,
        )
        for item in INVENTORY
    )
    session.add_all(KnowledgeArticle(slug=slug, title=title, body=body) for slug, title, body in KNOWLEDGE)

    rotation = services[DANA_BOOKING_SERVICE]
    start = dt.datetime.combine(next_weekday_after(today), DANA_BOOKING_TIME)
    booking = Booking(
        customer_id=customers[DANA_PHONE].id,
        service_id=rotation.id,
        start=start,
        end=start + dt.timedelta(minutes=rotation.duration_min),
        status="confirmed",
    )
    session.add(booking)
    session.flush()
    session.add(
        AuditLog(actor="seed", action="business.seed", entity="business", entity_id=BUSINESS_NAME, detail="")
    )
    return True
