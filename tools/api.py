"""Typed results and errors shared by every tool, and the `ToolBox` seam the dialogue calls through.

Tool functions are synchronous (they run a database transaction); the call session runs them in a
worker thread so the event loop never waits on the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


class ToolError(Exception):
    """Base of every error a tool reports; the dialogue turns these into spoken recoveries."""


class NotFound(ToolError):
    """The thing asked about does not exist (unknown order, booking, service...)."""


class SlotUnavailable(ToolError):
    """The requested time cannot be booked (closed, in the past, or every bay is taken)."""


class CrmUnavailable(ToolError):
    """The database did not answer in time or at all (down, locked, timed out, not migrated)."""


class InvalidRequest(ToolError):
    """The arguments make no sense (unknown service name, malformed order number...)."""


@dataclass(frozen=True, slots=True)
class CustomerInfo:
    id: int
    name: str
    phone: str  # E.164


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    id: int
    name: str  # spoken form, e.g. "oil change"
    duration_min: int
    price: Decimal


@dataclass(frozen=True, slots=True)
class Slot:
    service: str
    start: dt.datetime  # business-local, naive
    end: dt.datetime


@dataclass(frozen=True, slots=True)
class BookingInfo:
    id: int
    customer_id: int
    service: str
    start: dt.datetime
    end: dt.datetime
    status: str  # held | confirmed | cancelled | needs_review


@dataclass(frozen=True, slots=True)
class OrderInfo:
    number: str  # e.g. "A1042"
    customer_id: int | None
    description: str
    status: str  # e.g. "ready for pickup", "on backorder"


@dataclass(frozen=True, slots=True)
class InventoryInfo:
    sku: str
    name: str
    quantity: int
    price: Decimal


@dataclass(frozen=True, slots=True)
class BusinessInfo:
    name: str
    address: str
    hours_text: str  # spoken summary of opening hours


@dataclass(frozen=True, slots=True)
class KnowledgeArticleInfo:
    slug: str
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class KnowledgeAnswer:
    """Articles answering a caller's question, best first; `stale` when served from the cache."""

    query: str
    articles: tuple[KnowledgeArticleInfo, ...]
    stale: bool = False


class ToolBox(Protocol):
    """What the dialogue policy may do to the CRM. Every method may raise a `ToolError`."""

    def lookup_customer(self, phone: str) -> CustomerInfo | None: ...

    def create_customer(self, phone: str, name: str) -> CustomerInfo: ...

    def list_services(self) -> list[ServiceInfo]: ...

    def find_slots(self, service: str, day: dt.date, after: dt.time | None = None) -> list[Slot]: ...

    def book(
        self, customer_id: int, service: str, start: dt.datetime, source_call_id: str | None = None
    ) -> BookingInfo: ...

    def upcoming_bookings(self, customer_id: int) -> list[BookingInfo]: ...

    def cancel_booking(self, booking_id: int) -> BookingInfo: ...

    def order_status(self, order_number: str) -> OrderInfo: ...

    def check_inventory(self, spoken_name: str) -> InventoryInfo: ...

    def business_info(self) -> BusinessInfo: ...

    def is_open(self, day: dt.date) -> bool: ...

    def get_booking(self, booking_id: int) -> BookingInfo: ...

    def reschedule(self, booking_id: int, new_start: dt.datetime) -> BookingInfo: ...

    def search_business_info(self, query: str) -> KnowledgeAnswer: ...
