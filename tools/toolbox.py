"""`DatabaseToolBox`: the `tools.api.ToolBox` the dialogue uses, backed by the CRM database.

One short transaction per call (tools.transactions); the domain work lives in tools.booking and
tools.catalog; this facade adds phone normalisation, the clock, and the optional call log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import AuditLog, Customer, ToolInvocation
from tools import booking, catalog
from tools.api import (
    BookingInfo,
    BusinessInfo,
    CustomerInfo,
    InvalidRequest,
    InventoryInfo,
    OrderInfo,
    ServiceInfo,
    Slot,
    ToolError,
)
from tools.phone import DEFAULT_REGION, to_e164
from tools.transactions import CrmTransactions

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], dt.datetime]


def utc_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _to_json(value: object) -> str:
    # Decimal prices and datetimes become their str() forms: readable, and exact for prices.
    return json.dumps(_jsonable(value), default=str, sort_keys=True)


def _customer_info(customer: Customer) -> CustomerInfo:
    return CustomerInfo(id=customer.id, name=customer.name, phone=customer.phone)


class DatabaseToolBox:
    """Implements `tools.api.ToolBox`. Thread-safe: every call opens its own session.

    `now` may return an aware instant (converted to the business's time zone) or a naive datetime
    (taken as business-local already, convenient in tests). With a `call_id` (see `for_call`), every
    invocation is recorded as a ToolInvocation row after it finishes.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        timeout_s: float = 2.0,
        now: Clock = utc_clock,
        call_id: str | None = None,
        phone_region: str = DEFAULT_REGION,
    ) -> None:
        self._sessions = sessions
        self._timeout_s = timeout_s
        self._transactions = CrmTransactions(sessions, timeout_s=timeout_s)
        self._now = now
        self._call_id = call_id
        self._phone_region = phone_region
        self._zone: ZoneInfo | None = None  # the business's time zone, once local_now has read it

    def for_call(self, call_id: str) -> DatabaseToolBox:
        """The same toolbox, recording each invocation against `call_id`."""
        bound = DatabaseToolBox(
            self._sessions,
            timeout_s=self._timeout_s,
            now=self._now,
            call_id=call_id,
            phone_region=self._phone_region,
        )
        bound._zone = self._zone
        return bound

    def local_now(self) -> dt.datetime:
        """The business's wall-clock time now (naive), by the toolbox's clock.

        Give this to the dialogue as its clock, so "today" and "tomorrow" mean the same days to the
        dialogue as to `find_slots`, whatever time zone the server runs in. Only the first call reads
        the database (the business's time zone); later calls are cheap enough for the event loop.
        """
        instant = self._now()
        if instant.tzinfo is None:
            return instant
        if self._zone is None:
            with self._transactions.reading() as session:
                self._zone = booking.business_zone(booking.load_business(session))
        return instant.astimezone(self._zone).replace(tzinfo=None)

    # -- customers -------------------------------------------------------------------------------

    def lookup_customer(self, phone: str) -> CustomerInfo | None:
        def run() -> CustomerInfo | None:
            try:
                e164 = to_e164(phone, self._phone_region)
            except InvalidRequest:
                # Withheld or garbled caller IDs ("anonymous") simply mean an unknown caller.
                return None
            with self._transactions.reading() as session:
                customer = session.scalars(select(Customer).where(Customer.phone == e164)).first()
                return None if customer is None else _customer_info(customer)

        return self._invoke("lookup_customer", {"phone": phone}, run)

    def create_customer(self, phone: str, name: str) -> CustomerInfo:
        """Register a caller; if the number is already known, the existing customer is returned as is."""

        def run() -> CustomerInfo:
            e164 = to_e164(phone, self._phone_region)
            clean_name = " ".join(name.split())
            if not clean_name:
                raise InvalidRequest("a customer needs a name")
            with self._transactions.writing() as session:
                existing = session.scalars(select(Customer).where(Customer.phone == e164)).first()
                if existing is not None:
                    return _customer_info(existing)
                customer = Customer(phone=e164, name=clean_name)
                try:
                    # A savepoint: on PostgreSQL a concurrent call may insert the same number first.
                    with session.begin_nested():
                        session.add(customer)
                        session.flush()
                except sa_exc.IntegrityError:
                    winner = session.scalars(select(Customer).where(Customer.phone == e164)).one()
                    return _customer_info(winner)
                session.add(self._audit("customer.create", "customer", customer.id, e164))
                return _customer_info(customer)

        return self._invoke("create_customer", {"phone": phone, "name": name}, run)

    # -- services and bookings -----------------------------------------------------------------------

    def list_services(self) -> list[ServiceInfo]:
        def run() -> list[ServiceInfo]:
            with self._transactions.reading() as session:
                return [booking.service_info(service) for service in booking.active_services(session)]

        return self._invoke("list_services", {}, run)

    def find_slots(self, service: str, day: dt.date, after: dt.time | None = None) -> list[Slot]:
        def run() -> list[Slot]:
            with self._transactions.reading() as session:
                business = booking.load_business(session)
                offered = booking.resolve_service(session, service)
                local_now = booking.business_local(self._now(), business)
                return booking.free_slots(session, business, offered, day, local_now=local_now, after=after)

        return self._invoke("find_slots", {"service": service, "day": day, "after": after}, run)

    def book(
        self, customer_id: int, service: str, start: dt.datetime, source_call_id: str | None = None
    ) -> BookingInfo:
        call_id = source_call_id or self._call_id

        def run() -> BookingInfo:
            with self._transactions.writing(serialise_bookings=True) as session:
                business = booking.load_business(session)
                offered = booking.resolve_service(session, service)
                return booking.create_booking(
                    session,
                    business,
                    customer_id=customer_id,
                    service=offered,
                    start=booking.business_local(start, business),
                    local_now=booking.business_local(self._now(), business),
                    source_call_id=call_id,
                    actor=self._actor(call_id),
                )

        arguments = {
            "customer_id": customer_id,
            "service": service,
            "start": start,
            "source_call_id": call_id,
        }
        return self._invoke("book", arguments, run, call_id=call_id)

    def upcoming_bookings(self, customer_id: int) -> list[BookingInfo]:
        def run() -> list[BookingInfo]:
            with self._transactions.reading() as session:
                business = booking.load_business(session)
                return booking.upcoming(session, customer_id, booking.business_local(self._now(), business))

        return self._invoke("upcoming_bookings", {"customer_id": customer_id}, run)

    def cancel_booking(self, booking_id: int) -> BookingInfo:
        def run() -> BookingInfo:
            with self._transactions.writing() as session:
                business = booking.load_business(session)
                return booking.cancel(
                    session,
                    booking_id,
                    local_now=booking.business_local(self._now(), business),
                    actor=self._actor(self._call_id),
                )

        return self._invoke("cancel_booking", {"booking_id": booking_id}, run)

    # -- lookups -------------------------------------------------------------------------------------

    def order_status(self, order_number: str) -> OrderInfo:
        def run() -> OrderInfo:
            with self._transactions.reading() as session:
                return catalog.order_status(session, order_number)

        return self._invoke("order_status", {"order_number": order_number}, run)

    def check_inventory(self, spoken_name: str) -> InventoryInfo:
        def run() -> InventoryInfo:
            with self._transactions.reading() as session:
                return catalog.check_inventory(session, spoken_name)

        return self._invoke("check_inventory", {"spoken_name": spoken_name}, run)

    def business_info(self) -> BusinessInfo:
        def run() -> BusinessInfo:
            with self._transactions.reading() as session:
                return catalog.business_info(session, booking.load_business(session))

        return self._invoke("business_info", {}, run)

    def is_open(self, day: dt.date) -> bool:
        def run() -> bool:
            with self._transactions.reading() as session:
                return booking.day_schedule(session, day).is_open

        return self._invoke("is_open", {"day": day}, run)

    # -- call log ------------------------------------------------------------------------------------

    def _actor(self, call_id: str | None) -> str:
        return "agent" if call_id is None else f"agent:{call_id}"

    def _audit(self, action: str, entity: str, entity_id: int, detail: str) -> AuditLog:
        return AuditLog(
            actor=self._actor(self._call_id),
            action=action,
            entity=entity,
            entity_id=str(entity_id),
            detail=detail,
        )

    def _invoke(
        self, tool: str, arguments: dict[str, object], run: Callable[[], T], *, call_id: str | None = None
    ) -> T:
        call_id = call_id or self._call_id
        if call_id is None:
            return run()
        started = time.perf_counter()
        try:
            result = run()
        except ToolError as exc:
            self._record(call_id, tool, arguments, None, f"{type(exc).__name__}: {exc}", started)
            raise
        self._record(call_id, tool, arguments, result, None, started)
        return result

    def _record(
        self,
        call_id: str,
        tool: str,
        arguments: dict[str, object],
        result: object,
        error: str | None,
        started: float,
    ) -> None:
        row = ToolInvocation(
            call_id=call_id,
            tool=tool,
            arguments=_to_json(arguments),
            result=None if error is not None else _to_json(result),
            error=error,
            duration_ms=(time.perf_counter() - started) * 1000.0,
        )
        try:
            with self._transactions.writing() as session:
                session.add(row)
        except ToolError as exc:
            # The call log is secondary: losing one row must not turn a done booking into a failure.
            log.warning("could not record %s for call %s: %s", tool, call_id, exc)
