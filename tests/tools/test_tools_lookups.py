"""Customers, orders, stock and business details through DatabaseToolBox, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import AuditLog, Customer
from tools.api import InvalidRequest, NotFound
from tools.toolbox import DatabaseToolBox


@pytest.mark.parametrize(
    "phone",
    ["5550100002", "+1 555 010 0002", "+15550100002", "sip:+15550100002@host", "<sip:5550100002@10.0.0.9>"],
)
def test_lookup_customer_by_any_spelling_of_the_number(toolbox: DatabaseToolBox, phone: str) -> None:
    customer = toolbox.lookup_customer(phone)
    assert customer is not None
    assert (customer.name, customer.phone) == ("Marcus Lee", "+15550100002")


@pytest.mark.parametrize("phone", ["+15550109999", "anonymous", "sip:anonymous@anonymous.invalid", ""])
def test_lookup_unknown_or_withheld_numbers(toolbox: DatabaseToolBox, phone: str) -> None:
    assert toolbox.lookup_customer(phone) is None


def test_create_customer(toolbox: DatabaseToolBox, sessions: sessionmaker[Session]) -> None:
    created = toolbox.create_customer("sip:5550100042@pbx", "  Sam   Ortiz ")
    assert (created.name, created.phone) == ("Sam Ortiz", "+15550100042")
    assert toolbox.lookup_customer("555 010 0042") == created
    # Registering a known number again returns the existing customer unchanged.
    assert toolbox.create_customer("+15550100042", "Samuel Ortiz") == created
    assert toolbox.create_customer("5550100001", "Someone Else").name == "Dana Whitfield"
    with sessions() as session:
        assert len(session.scalars(select(Customer).where(Customer.phone == "+15550100042")).all()) == 1
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "customer.create")).one()
    assert audit.entity_id == str(created.id)

    with pytest.raises(InvalidRequest):
        toolbox.create_customer("anonymous", "Nobody")
    with pytest.raises(InvalidRequest):
        toolbox.create_customer("+15550100043", "   ")


@pytest.mark.parametrize(
    ("spoken", "status"),
    [
        ("A1042", "ready for pickup"),
        ("a 1042", "ready for pickup"),
        ("a one oh four two", "ready for pickup"),
        ("b2077", "on backorder"),
        ("B 2077", "on backorder"),
    ],
)
def test_order_status(toolbox: DatabaseToolBox, spoken: str, status: str) -> None:
    assert toolbox.order_status(spoken).status == status


def test_order_status_details_and_errors(toolbox: DatabaseToolBox) -> None:
    order = toolbox.order_status("a 1042")
    assert (order.number, order.customer_id, order.description) == ("A1042", 1, "front brake pads")
    with pytest.raises(NotFound):
        toolbox.order_status("C9999")
    with pytest.raises(InvalidRequest):
        toolbox.order_status("my brakes")


@pytest.mark.parametrize(
    ("spoken", "sku"),
    [
        ("wipers", "WB-22"),
        ("windshield wipers", "WB-22"),
        ("do you have any wiper blades", "WB-22"),
        ("brake pads", "BP-F100"),
        ("twenty four f battery", "BAT-24F"),
        ("car battery", "BAT-24F"),
        ("five w thirty oil", "OIL-5W30"),
        ("motor oil", "OIL-5W30"),
        ("tires", "TIR-2055516"),
        ("two oh five fifty five sixteen", "TIR-2055516"),
        ("BAT-24F", "BAT-24F"),
    ],
)
def test_check_inventory_matches_spoken_names(toolbox: DatabaseToolBox, spoken: str, sku: str) -> None:
    assert toolbox.check_inventory(spoken).sku == sku


def test_check_inventory_details_and_misses(toolbox: DatabaseToolBox) -> None:
    pads = toolbox.check_inventory("brake pads")
    assert (pads.name, pads.quantity, pads.price) == ("front brake pads", 0, Decimal("64.50"))
    wipers = toolbox.check_inventory("wipers")
    assert (wipers.quantity, wipers.price) == (14, Decimal("18.99"))
    for spoken in ("banana", "brake fluid", "the"):
        with pytest.raises(NotFound):
            toolbox.check_inventory(spoken)


def test_business_info(toolbox: DatabaseToolBox) -> None:
    info = toolbox.business_info()
    assert (info.name, info.address) == ("Riverside Auto Care", "221 River Road")
    assert info.hours_text == "Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM, closed Sunday"


def test_is_open_by_weekday(toolbox: DatabaseToolBox) -> None:
    week = [dt.date(2026, 11, 16) + dt.timedelta(days=offset) for offset in range(7)]
    assert [toolbox.is_open(day) for day in week] == [True, True, True, True, True, True, False]
