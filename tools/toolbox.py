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

from crm import outbox
from crm.models import AuditLog, Customer, ToolInvocation
from crm.outbox import OutboxWrite
from tools import booking, catalog, knowledge
from tools.api import (
    BookingInfo,
    BusinessInfo,
    CrmUnavailable,
    CustomerInfo,
    InvalidRequest,
    InventoryInfo,
    KnowledgeAnswer,
    OrderInfo,
    ServiceInfo,
    Slot,
    ToolError,
)
from tools.knowledge import LastGoodAnswers
from tools.phone import DEFAULT_REGION, to_e164
from tools.schemas import READ_TIMEOUT_S, TIMEOUT_BY_METHOD
from tools.transactions import CrmTransactions

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], dt.datetime]
# Stores a write durably somewhere other than the database (workers.spool.WriteSpool.put).
SpoolWrite = Callable[[OutboxWrite], object]
# A booking spooled while the database was down: recorded, applied later, not yet confirmed.
SPOOLED_STATUS = "held"


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


def _booking_event(info: BookingInfo, call_id: str | None) -> dict[str, object]:
    return {**dataclasses.asdict(info), "source_call_id": call_id}


def _customer_info(customer: Customer) -> CustomerInfo:
    return CustomerInfo(id=customer.id, name=customer.name, phone=customer.phone)


class DatabaseToolBox:
    """Implements `tools.api.ToolBox`. Thread-safe: every call opens its own session.

    `now` may return an aware instant (converted to the business's time zone) or a naive datetime
    (taken as business-local already, convenient in tests). With a `call_id` (see `for_call`), every
    invocation is recorded as a ToolInvocation row after it finishes.

    Each tool runs under its own time limit from tools.schemas; a `timeout_s` given here overrides them
    all. `answers` keeps the last good knowledge-search answers; toolboxes for the calls of one server
    share it (`for_call`).

    With `external_sync`, each write also records an outbox message for the external CRM in the same
    transaction (workers deliver it). With `spool_write`, a booking or cancellation decided while the
    database is unreachable is spooled durably instead of lost; the booking comes back with status
    SPOOLED_STATUS and id 0, and lands once the database returns (as needs_review if the slot went).
    `notify` is called after a write was recorded, to wake the delivery loop.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        timeout_s: float | None = None,
        now: Clock = utc_clock,
        call_id: str | None = None,
        phone_region: str = DEFAULT_REGION,
        answers: LastGoodAnswers | None = None,
        external_sync: bool = False,
        spool_write: SpoolWrite | None = None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._external_sync = external_sync
        self._spool_write = spool_write
        self._notify = notify
        self._timeout_s = timeout_s
        self._transactions = CrmTransactions(sessions, timeout_s=timeout_s or READ_TIMEOUT_S)
        self._per_tool: dict[str, CrmTransactions] = {}
        self._now = now
        self._call_id = call_id
        self._phone_region = phone_region
        self._answers = LastGoodAnswers() if answers is None else answers
        self._zone: ZoneInfo | None = None  # the business's time zone, once local_now has read it

    def for_call(self, call_id: str) -> DatabaseToolBox:
        """The same toolbox, recording each invocation against `call_id`."""
        bound = DatabaseToolBox(
            self._sessions,
            timeout_s=self._timeout_s,
            now=self._now,
            call_id=call_id,
            phone_region=self._phone_region,
            answers=self._answers,
            external_sync=self._external_sync,
            spool_write=self._spool_write,
            notify=self._notify,
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
            with self._limited("lookup_customer").reading() as session:
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
            with self._limited("create_customer").writing() as session:
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
                info = _customer_info(customer)
                self._sync(session, "customer.create", f"customer:{info.id}", dataclasses.asdict(info))
                return info

        return self._invoke("create_customer", {"phone": phone, "name": name}, run)

    # -- services and bookings -----------------------------------------------------------------------

    def list_services(self) -> list[ServiceInfo]:
        def run() -> list[ServiceInfo]:
            with self._limited("list_services").reading() as session:
                return [booking.service_info(service) for service in booking.active_services(session)]

        return self._invoke("list_services", {}, run)

    def find_slots(self, service: str, day: dt.date, after: dt.time | None = None) -> list[Slot]:
        def run() -> list[Slot]:
            with self._limited("find_slots").reading() as session:
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
            try:
                with self._limited("book").writing(serialise_bookings=True) as session:
                    business = booking.load_business(session)
                    offered = booking.resolve_service(session, service)
                    made = booking.create_booking(
                        session,
                        business,
                        customer_id=customer_id,
                        service=offered,
                        start=booking.business_local(start, business),
                        local_now=booking.business_local(self._now(), business),
                        source_call_id=call_id,
                        actor=self._actor(call_id),
                    )
                    self._sync(session, "booking.create", f"booking:{made.id}", _booking_event(made, call_id))
            except CrmUnavailable:
                if self._spool_write is None:
                    raise
                return self._spool_booking(customer_id, service, start, call_id)
            self._wake()
            return made

        arguments = {
            "customer_id": customer_id,
            "service": service,
            "start": start,
            "source_call_id": call_id,
        }
        return self._invoke("book", arguments, run, call_id=call_id)

    def upcoming_bookings(self, customer_id: int) -> list[BookingInfo]:
        def run() -> list[BookingInfo]:
            with self._limited("upcoming_bookings").reading() as session:
                business = booking.load_business(session)
                return booking.upcoming(session, customer_id, booking.business_local(self._now(), business))

        return self._invoke("upcoming_bookings", {"customer_id": customer_id}, run)

    def cancel_booking(self, booking_id: int) -> BookingInfo:
        def run() -> BookingInfo:
            try:
                with self._limited("cancel_booking").writing() as session:
                    business = booking.load_business(session)
                    cancelled = booking.cancel(
                        session,
                        booking_id,
                        local_now=booking.business_local(self._now(), business),
                        actor=self._actor(self._call_id),
                    )
                    event = _booking_event(cancelled, self._call_id)
                    self._sync(session, "booking.cancel", f"booking-cancel:{booking_id}", event)
            except CrmUnavailable:
                if self._spool_write is None:
                    raise
                self._spool(
                    "booking.cancel",
                    {"booking_id": booking_id, "source_call_id": self._call_id},
                    ("booking.cancel", booking_id),
                )
                raise  # nothing to describe the booking with: the dialogue says it will follow up
            self._wake()
            return cancelled

        return self._invoke("cancel_booking", {"booking_id": booking_id}, run)

    # -- lookups -------------------------------------------------------------------------------------

    def order_status(self, order_number: str) -> OrderInfo:
        def run() -> OrderInfo:
            with self._limited("order_status").reading() as session:
                return catalog.order_status(session, order_number)

        return self._invoke("order_status", {"order_number": order_number}, run)

    def check_inventory(self, spoken_name: str) -> InventoryInfo:
        def run() -> InventoryInfo:
            with self._limited("check_inventory").reading() as session:
                return catalog.check_inventory(session, spoken_name)

        return self._invoke("check_inventory", {"spoken_name": spoken_name}, run)

    def business_info(self) -> BusinessInfo:
        def run() -> BusinessInfo:
            with self._limited("business_info").reading() as session:
                return catalog.business_info(session, booking.load_business(session))

        return self._invoke("business_info", {}, run)

    def is_open(self, day: dt.date) -> bool:
        def run() -> bool:
            with self._limited("is_open").reading() as session:
                return booking.day_schedule(session, day).is_open

        return self._invoke("is_open", {"day": day}, run)

    def get_booking(self, booking_id: int) -> BookingInfo:
        def run() -> BookingInfo:
            with self._limited("get_booking").reading() as session:
                return booking.get_booking(session, booking_id)

        return self._invoke("get_booking", {"booking_id": booking_id}, run)

    def reschedule(self, booking_id: int, new_start: dt.datetime) -> BookingInfo:
        def run() -> BookingInfo:
            with self._limited("reschedule").writing(serialise_bookings=True) as session:
                business = booking.load_business(session)
                return booking.reschedule(
                    session,
                    business,
                    booking_id,
                    new_start=booking.business_local(new_start, business),
                    local_now=booking.business_local(self._now(), business),
                    actor=self._actor(self._call_id),
                )

        return self._invoke("reschedule", {"booking_id": booking_id, "new_start": new_start}, run)

    def search_business_info(self, query: str) -> KnowledgeAnswer:
        """Knowledge articles answering `query`; the last good answer (stale) if the search fails."""

        def run() -> KnowledgeAnswer:
            try:
                with self._limited("search_business_info").reading() as session:
                    answer = knowledge.search(session, query)
            except CrmUnavailable:
                cached = self._answers.recall(query)
                if cached is None:
                    raise
                log.warning("knowledge search failed; serving the cached answer for %r", query)
                return dataclasses.replace(cached, query=query, stale=True)
            self._answers.remember(answer)
            return answer

        return self._invoke("search_business_info", {"query": query}, run)

    def _limited(self, method: str) -> CrmTransactions:
        """Transactions under `method`'s own time limit (or the toolbox-wide override)."""
        timeout_s = self._timeout_s or TIMEOUT_BY_METHOD.get(method, READ_TIMEOUT_S)
        transactions = self._per_tool.get(method)
        if transactions is None:
            transactions = CrmTransactions(self._sessions, timeout_s=timeout_s)
            self._per_tool[method] = transactions
        return transactions

    # -- durable writes (workers/) --------------------------------------------------------------------

    def _sync(self, session: Session, kind: str, identity: str, payload: dict[str, object]) -> None:
        """Record the write for the external CRM in the transaction that makes it."""
        if self._external_sync:
            key = outbox.idempotency_key(kind, identity)
            outbox.record(session, OutboxWrite(kind, "external", payload, key))

    def _spool(self, kind: str, payload: dict[str, object], identity: tuple[object, ...]) -> None:
        assert self._spool_write is not None
        write = OutboxWrite(kind, "crm", payload, outbox.idempotency_key(*identity))
        try:
            self._spool_write(write)
        except OSError as exc:
            raise CrmUnavailable(f"database down and the spool failed: {exc}") from exc
        log.warning("database unavailable: spooled %s %s", kind, write.idempotency_key)

    def _spool_booking(
        self, customer_id: int, service: str, start: dt.datetime, call_id: str | None
    ) -> BookingInfo:
        payload: dict[str, object] = {
            "customer_id": customer_id,
            "service": service,
            "start": start.isoformat(),
            "decided_at": self._now().isoformat(),
            "source_call_id": call_id,
        }
        self._spool("booking.create", payload, ("booking.create", call_id, customer_id, service, start))
        # Without the database the duration is unknown; id 0 and SPOOLED_STATUS say "noted, not confirmed".
        return BookingInfo(
            id=0, customer_id=customer_id, service=service, start=start, end=start, status=SPOOLED_STATUS
        )

    def _wake(self) -> None:
        if self._notify is not None and self._external_sync:
            self._notify()

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
