"""Read-only lookups: orders, stock, the business's own details. Run inside a caller's transaction."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm.models import Business, InventoryItem, Order
from tools.api import BusinessInfo, InvalidRequest, InventoryInfo, NotFound, OrderInfo
from tools.booking import weekly_intervals
from tools.matching import best_match, normalise_order_number
from tools.scheduling import spoken_hours_summary


def order_status(session: Session, spoken_number: str) -> OrderInfo:
    number = normalise_order_number(spoken_number)
    if number is None:
        raise InvalidRequest(f"{spoken_number!r} is not an order number (a letter and digits, like A1042)")
    order = session.scalars(select(Order).where(func.upper(Order.number) == number)).first()
    if order is None:
        raise NotFound(f"no order {number}")
    return OrderInfo(
        number=order.number, customer_id=order.customer_id, description=order.description, status=order.status
    )


def check_inventory(session: Session, spoken_name: str) -> InventoryInfo:
    # The catalogue of a garage is small (tens to a few hundred lines); scoring it in Python keeps the
    # matching identical on SQLite and PostgreSQL.
    items = list(session.scalars(select(InventoryItem).order_by(InventoryItem.id)))
    sku = best_match(spoken_name, ((item.sku, [item.name, item.sku, *item.alias_list]) for item in items))
    if sku is None:
        raise NotFound(f"nothing in stock matches {spoken_name!r}")
    item = next(item for item in items if item.sku == sku)
    return InventoryInfo(sku=item.sku, name=item.name, quantity=item.quantity, price=item.price)


def business_info(session: Session, business: Business) -> BusinessInfo:
    return BusinessInfo(
        name=business.name,
        address=business.address,
        hours_text=spoken_hours_summary(weekly_intervals(session)),
    )
