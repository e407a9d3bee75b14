"""Gather the words callers will use about this business, for the speech model."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.vocabulary import DomainVocabulary
from crm.models import Business, Customer, InventoryItem, Order, Service


def _unique_lower(words: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in words:
        spoken = " ".join(word.lower().split())
        if spoken:
            seen.setdefault(spoken, None)
    return tuple(seen)


def _spoken_product_names(item: InventoryItem) -> list[str]:
    # Catalogue names like "tire 205/55R16" are not how people speak; the aliases are. An item without
    # aliases still contributes its name so it stays reachable.
    return item.alias_list or [item.name]


def load_vocabulary(session: Session) -> DomainVocabulary:
    business_name = session.scalar(select(Business.name).order_by(Business.id).limit(1)) or ""
    services = session.scalars(select(Service.name).where(Service.active).order_by(Service.id))
    items = session.scalars(select(InventoryItem).order_by(InventoryItem.id))
    customer_names = session.scalars(select(Customer.name).order_by(Customer.id))
    order_numbers = session.scalars(select(Order.number).order_by(Order.id))
    return DomainVocabulary(
        business_name=business_name,
        services=_unique_lower(services),
        products=_unique_lower(name for item in items for name in _spoken_product_names(item)),
        customer_names=_unique_lower(customer_names),
        order_numbers=tuple(number.upper() for number in order_numbers),
    )
