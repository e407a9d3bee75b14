"""What staff do in the admin app and the JSON API: find, review, edit and cancel bookings, edit stock and
knowledge articles. Every change writes an AuditLog row naming the staff member.

Errors are the tools' own (`tools.api`): NotFound, InvalidRequest, SlotUnavailable; the web layers map
them to status codes. Functions take a session inside a transaction the caller opened.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from crm.models import (
    BOOKING_STATUSES,
    AuditLog,
    Booking,
    Call,
    Customer,
    InventoryItem,
    KnowledgeArticle,
    Service,
    ToolInvocation,
    Turn,
    utc_now,
)
from tools import booking as booking_rules
from tools.api import InvalidRequest, NotFound

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# An offset makes the database walk past every skipped row (~3 s at offset 999,950 of 1,000,000 bookings
# on PostgreSQL); deeper than this, page with the cursors instead.
MAX_OFFSET = 10_000
_MAX_CURSOR_CHARS = 64
_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class BookingCursor:
    """A place in the bookings list's order, (start, id): a page starts after one or ends before one.

    Keyset paging rather than an offset: each page is an index range scan from the cursor, as quick on
    the last of a million bookings as on the first, and a booking added or removed meanwhile neither
    repeats a row nor skips one at the page boundary. Written `<start ISO>_<id>` in URLs.
    """

    start: dt.datetime
    id: int

    def __str__(self) -> str:
        return f"{self.start.isoformat()}_{self.id}"

    @classmethod
    def parse(cls, text: str) -> BookingCursor:
        start, _, booking_id = text.strip().rpartition("_")
        problem = InvalidRequest(
            f"{text[:_MAX_CURSOR_CHARS]!r} is not a page position: follow the page links"
        )
        # Up to 18 digits: a bigger id would not fit SQLite's 64-bit integer (an error, not a page).
        if len(text) > _MAX_CURSOR_CHARS or not start or not _ID.fullmatch(booking_id):
            raise problem
        try:
            when = dt.datetime.fromisoformat(start)
        except ValueError as exc:
            raise problem from exc
        if when.tzinfo is not None:
            raise problem
        return cls(when, int(booking_id))


@dataclass(frozen=True, slots=True)
class BookingFilter:
    day: dt.date | None = None
    status: str | None = None
    needs_review: bool | None = None  # True: status needs_review and not yet reviewed
    service: str | None = None
    limit: int = PAGE_SIZE
    offset: int = 0
    after: BookingCursor | None = None  # the page of rows following this position
    before: BookingCursor | None = None  # the page of rows preceding it

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in BOOKING_STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(BOOKING_STATUSES)}")
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidRequest(f"offset must be between 0 and {MAX_OFFSET}; page further with after=")
        if self.after is not None and self.before is not None:
            raise InvalidRequest("give after or before, not both")
        if self.offset and (self.after is not None or self.before is not None):
            raise InvalidRequest("give an offset or a page position (after/before), not both")


@dataclass(frozen=True, slots=True)
class BookingRow:
    id: int
    start: dt.datetime
    end: dt.datetime
    status: str
    service: str
    customer_id: int
    customer_name: str
    customer_phone: str
    source_call_id: str | None
    reviewed_at: dt.datetime | None
    reviewed_by: str | None


@dataclass(frozen=True, slots=True)
class BookingPage:
    """One page of the list. `previous` and `next` are the cursors to pass as before= and after= for the
    neighbouring pages, None where there are no more rows that way."""

    rows: tuple[BookingRow, ...]
    previous: BookingCursor | None
    next: BookingCursor | None


@dataclass(frozen=True, slots=True)
class TurnRow:
    index: int
    speaker: str
    text: str
    started_at: dt.datetime
    stt_ms: float | None
    e2e_ms: float | None
    intent: str | None


@dataclass(frozen=True, slots=True)
class ToolCallRow:
    tool: str
    arguments: str
    result: str | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class AuditRow:
    actor: str
    action: str
    detail: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class BookingDetail:
    booking: BookingRow
    call_started_at: dt.datetime | None
    call_from: str | None
    turns: tuple[TurnRow, ...]
    tool_calls: tuple[ToolCallRow, ...]
    audit: tuple[AuditRow, ...]


def _booking_query(*conditions: ColumnElement[bool]) -> Select[Booking, str, str, str]:
    return (
        select(Booking, Service.name, Customer.name, Customer.phone)
        .join(Service, Service.id == Booking.service_id)
        .join(Customer, Customer.id == Booking.customer_id)
        .where(*conditions)
    )


def _booking_rows(
    session: Session, *conditions: ColumnElement[bool], limit: int, offset: int, backwards: bool = False
) -> list[BookingRow]:
    order = (Booking.start.desc(), Booking.id.desc()) if backwards else (Booking.start, Booking.id)
    query = _booking_query(*conditions).order_by(*order).limit(limit).offset(offset)
    return [
        BookingRow(
            id=row.id,
            start=row.start,
            end=row.end,
            status=row.status,
            service=service,
            customer_id=row.customer_id,
            customer_name=name,
            customer_phone=phone,
            source_call_id=row.source_call_id,
            reviewed_at=row.reviewed_at,
            reviewed_by=row.reviewed_by,
        )
        for row, service, name, phone in session.execute(query)
    ]


def _beyond(cursor: BookingCursor, *, backwards: bool) -> ColumnElement[bool]:
    """Rows strictly after `cursor` in (start, id) order (before it when `backwards`). The bare range on
    `start` is implied by the rest; it is there so the planner can use the start indexes for it."""
    if backwards:
        tie = and_(Booking.start == cursor.start, Booking.id < cursor.id)
        return and_(Booking.start <= cursor.start, or_(Booking.start < cursor.start, tie))
    tie = and_(Booking.start == cursor.start, Booking.id > cursor.id)
    return and_(Booking.start >= cursor.start, or_(Booking.start > cursor.start, tie))


def _any_row(session: Session, *conditions: ColumnElement[bool]) -> bool:
    found = session.execute(_booking_query(*conditions).with_only_columns(Booking.id).limit(1)).first()
    return found is not None


def _cursor(row: BookingRow) -> BookingCursor:
    return BookingCursor(row.start, row.id)


def list_bookings(session: Session, filters: BookingFilter) -> BookingPage:
    """A page of bookings in (start, id) order: the first one, or the one after `filters.after`, or the
    one before `filters.before`. One row more than the page is read to learn whether the list goes on
    that way; whether it goes on the other way costs a one-row probe, and only when there is a cursor.
    """
    conditions: list[ColumnElement[bool]] = []
    if filters.day is not None:
        midnight = dt.datetime.combine(filters.day, dt.time())
        conditions += [Booking.start >= midnight, Booking.start < midnight + dt.timedelta(days=1)]
    if filters.status is not None:
        conditions.append(Booking.status == filters.status)
    if filters.needs_review is True:
        conditions += [Booking.status == "needs_review", Booking.reviewed_at.is_(None)]
    elif filters.needs_review is False:
        conditions.append(Booking.status != "needs_review")
    if filters.service:
        conditions.append(func.lower(Service.name) == filters.service.strip().lower())
    backwards = filters.before is not None
    position = filters.before if filters.before is not None else filters.after
    paged = conditions if position is None else [*conditions, _beyond(position, backwards=backwards)]
    rows = _booking_rows(session, *paged, limit=filters.limit + 1, offset=filters.offset, backwards=backwards)
    more, rows = len(rows) > filters.limit, rows[: filters.limit]
    if backwards:
        rows.reverse()
    if not rows:
        return BookingPage(rows=(), previous=None, next=None)
    first, last = _cursor(rows[0]), _cursor(rows[-1])
    if backwards:
        later = _any_row(session, *conditions, _beyond(last, backwards=False))
        return BookingPage(rows=tuple(rows), previous=first if more else None, next=last if later else None)
    earlier = (position is not None or filters.offset > 0) and _any_row(
        session, *conditions, _beyond(first, backwards=True)
    )
    return BookingPage(rows=tuple(rows), previous=first if earlier else None, next=last if more else None)


def booking_row(session: Session, booking_id: int) -> BookingRow:
    rows = _booking_rows(session, Booking.id == booking_id, limit=1, offset=0)
    if not rows:
        raise NotFound(f"no booking with id {booking_id}")
    return rows[0]


def booking_detail(session: Session, booking_id: int) -> BookingDetail:
    row = booking_row(session, booking_id)
    call = None if row.source_call_id is None else session.get(Call, row.source_call_id)
    turns: tuple[TurnRow, ...] = ()
    tool_calls: tuple[ToolCallRow, ...] = ()
    if row.source_call_id is not None:
        turns = tuple(
            TurnRow(t.index, t.speaker, t.text, t.started_at, t.stt_ms, t.e2e_ms, t.intent)
            for t in session.scalars(
                select(Turn).where(Turn.call_id == row.source_call_id).order_by(Turn.index)
            )
        )
        tool_calls = tuple(
            ToolCallRow(t.tool, t.arguments, t.result, t.error, t.duration_ms)
            for t in session.scalars(
                select(ToolInvocation)
                .where(ToolInvocation.call_id == row.source_call_id)
                .order_by(ToolInvocation.id)
            )
        )
    audit = tuple(
        AuditRow(a.actor, a.action, a.detail, a.created_at)
        for a in session.scalars(
            select(AuditLog)
            .where(AuditLog.entity == "booking", AuditLog.entity_id == str(booking_id))
            .order_by(AuditLog.id)
        )
    )
    return BookingDetail(
        booking=row,
        call_started_at=None if call is None else call.started_at,
        call_from=None if call is None else call.from_number,
        turns=turns,
        tool_calls=tool_calls,
        audit=audit,
    )


def _audit(session: Session, actor: str, action: str, entity: str, entity_id: object, detail: object) -> None:
    session.add(
        AuditLog(
            actor=actor,
            action=action,
            entity=entity,
            entity_id=str(entity_id),
            detail=json.dumps(detail, default=str, sort_keys=True),
        )
    )


def _booking(session: Session, booking_id: int) -> Booking:
    # FOR UPDATE on PostgreSQL: two staff members acting on one booking take turns (ignored by SQLite).
    found = session.scalars(select(Booking).where(Booking.id == booking_id).with_for_update()).first()
    if found is None:
        raise NotFound(f"no booking with id {booking_id}")
    return found


def mark_reviewed(session: Session, booking_id: int, *, actor: str) -> BookingRow:
    """Approve what the agent booked: a needs_review booking becomes confirmed; all get reviewed_at/by."""
    found = _booking(session, booking_id)
    previous = found.status
    if previous == "needs_review":
        found.status = "confirmed"
    found.reviewed_at, found.reviewed_by = utc_now(), actor
    _audit(session, actor, "booking.review", "booking", found.id, {"status": [previous, found.status]})
    session.flush()
    return booking_row(session, booking_id)


def edit_booking(
    session: Session,
    booking_id: int,
    *,
    actor: str,
    start: dt.datetime | None = None,
    service: str | None = None,
    status: str | None = None,
) -> BookingRow:
    """Change time, service or status. New times must fit opening hours and a free bay; staff may move a
    booking into the past (to record what really happened), which the agent may not.
    """
    if status is not None and status not in BOOKING_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(BOOKING_STATUSES)}")
    found = _booking(session, booking_id)
    changes: dict[str, list[str]] = {}
    offered = session.get(Service, found.service_id)
    if service is not None:
        offered = session.scalars(select(Service).where(func.lower(Service.name) == service.lower())).first()
        if offered is None:
            raise InvalidRequest(f"no service named {service!r}")
    assert offered is not None  # a foreign key guarantees the booking's service exists
    new_start = found.start if start is None else start
    if new_start != found.start or offered.id != found.service_id:
        business = booking_rules.load_business(session)
        end = booking_rules.check_bookable(
            session, business, offered, new_start, local_now=dt.datetime.min, ignoring=found.id
        )
        if new_start != found.start:
            changes["start"] = [found.start.isoformat(), new_start.isoformat()]
        if offered.id != found.service_id:
            changes["service_id"] = [str(found.service_id), str(offered.id)]
        found.start, found.end, found.service_id = new_start, end, offered.id
    if status is not None and status != found.status:
        changes["status"] = [found.status, status]
        found.status = status
    if changes:
        _audit(session, actor, "booking.edit", "booking", found.id, changes)
        session.flush()
    return booking_row(session, booking_id)


def cancel_booking(session: Session, booking_id: int, *, actor: str) -> BookingRow:
    found = _booking(session, booking_id)
    if found.status != "cancelled":
        _audit(session, actor, "booking.cancel", "booking", found.id, {"status": [found.status, "cancelled"]})
        found.status = "cancelled"
        session.flush()
    return booking_row(session, booking_id)


def service_names(session: Session) -> list[str]:
    return list(session.scalars(select(Service.name).order_by(Service.name)))


# -- stock and knowledge ------------------------------------------------------------------------------


def inventory(session: Session) -> list[InventoryItem]:
    return list(session.scalars(select(InventoryItem).order_by(InventoryItem.name)))


def parse_price(raw: str) -> Decimal:
    try:
        price = Decimal(raw.strip())
    except InvalidOperation as exc:
        raise InvalidRequest(f"{raw!r} is not a price") from exc
    if not price.is_finite() or price < 0 or price >= Decimal("100000000"):
        raise InvalidRequest("a price is a non-negative amount below 100,000,000")
    return price.quantize(Decimal("0.01"))


def update_inventory(
    session: Session,
    sku: str,
    *,
    actor: str,
    name: str | None = None,
    quantity: int | None = None,
    price: Decimal | None = None,
    aliases: str | None = None,
) -> InventoryItem:
    item = session.scalars(select(InventoryItem).where(InventoryItem.sku == sku).with_for_update()).first()
    if item is None:
        raise NotFound(f"no inventory item {sku!r}")
    if quantity is not None and quantity < 0:
        raise InvalidRequest("quantity cannot be negative")
    if name is not None and not name.strip():
        raise InvalidRequest("an item needs a name")
    changes: dict[str, list[str]] = {}
    for field, value in (("name", name), ("quantity", quantity), ("price", price), ("aliases", aliases)):
        if value is None:
            continue
        if field == "aliases":
            value = ", ".join(alias.strip() for alias in str(value).split(",") if alias.strip())
        if field == "name":
            value = str(value).strip()
        if getattr(item, field) != value:
            changes[field] = [str(getattr(item, field)), str(value)]
            setattr(item, field, value)
    if changes:
        _audit(session, actor, "inventory.edit", "inventory_item", item.sku, changes)
        session.flush()
    return item


def articles(session: Session) -> list[KnowledgeArticle]:
    return list(session.scalars(select(KnowledgeArticle).order_by(KnowledgeArticle.title)))


def article(session: Session, slug: str) -> KnowledgeArticle:
    found = session.scalars(select(KnowledgeArticle).where(KnowledgeArticle.slug == slug)).first()
    if found is None:
        raise NotFound(f"no article {slug!r}")
    return found


def save_article(session: Session, slug: str, *, actor: str, title: str, body: str) -> KnowledgeArticle:
    """Create or replace the article `slug` (lower-case letters, digits and dashes)."""
    clean_slug = slug.strip().lower()
    if not clean_slug or len(clean_slug) > 100 or not all(c.isalnum() or c == "-" for c in clean_slug):
        raise InvalidRequest("a slug is 1 to 100 lower-case letters, digits and dashes")
    if not title.strip() or len(title) > 200:
        raise InvalidRequest("a title is 1 to 200 characters")
    if not body.strip():
        raise InvalidRequest("an article needs a body")
    found = session.scalars(select(KnowledgeArticle).where(KnowledgeArticle.slug == clean_slug)).first()
    if found is None:
        found = KnowledgeArticle(slug=clean_slug, title=title.strip(), body=body.strip())
        session.add(found)
        action = "article.create"
    else:
        found.title, found.body = title.strip(), body.strip()
        action = "article.edit"
    session.flush()
    _audit(session, actor, action, "knowledge_article", clean_slug, {"title": found.title})
    return found
