"""The CRM schema as typed SQLAlchemy 2 models.

A database holds one business: its hours, services, customers, bookings, orders, stock and knowledge
articles, plus the call log (calls, turns, tool invocations) and an audit trail.

Two kinds of time live here and are kept apart on purpose:
- appointment times (`Booking.start`/`end`, `Closure.date`, opening hours) are naive and business-local,
  because "Tuesday at nine" means nine on the shop's wall clock, whatever the server's zone is;
- event timestamps (`created_at`, call start/end...) are instants, stored as naive UTC by `UtcDateTime`
  and handed back timezone-aware, so SQLite and PostgreSQL return the same thing.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    Time,
    TypeDecorator,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: SQLite batch migrations recreate tables and need to find constraints
# by name, and the same names on both databases keep later revisions portable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BOOKING_STATUSES = ("held", "confirmed", "cancelled", "needs_review")
ADMIN_ROLES = ("admin", "supervisor")
SPEAKERS = ("caller", "agent")
HANGUP_PARTIES = ("caller", "agent")
TRANSPORTS = ("sip", "twilio")
# Twilio's CallStatus values (plus `initiated`, the first progress event); SIP calls use the same words.
CALL_STATUSES = (
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "no-answer",
    "failed",
    "canceled",
)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An instant stored as naive UTC; refuses naive input, which would be ambiguous."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs a timezone-aware datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Business(Base):
    __tablename__ = "businesses"
    __table_args__ = (CheckConstraint("bay_count >= 1", name="bay_count_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(300))
    phone: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64))  # IANA name, e.g. "America/New_York"
    bay_count: Mapped[int] = mapped_column(Integer)


class OpeningHours(Base):
    """One open interval on a weekday; a weekday without rows is closed. Several rows allow split shifts."""

    __tablename__ = "opening_hours"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 0 AND 6", name="weekday_range"),
        CheckConstraint("opens < closes", name="opens_before_closes"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    weekday: Mapped[int] = mapped_column(Integer)  # 0 = Monday .. 6 = Sunday
    opens: Mapped[dt.time] = mapped_column(Time)
    closes: Mapped[dt.time] = mapped_column(Time)


class Closure(Base):
    """A day the shop is shut despite its weekly hours (public holiday, stock-take...)."""

    __tablename__ = "closures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, unique=True)
    reason: Mapped[str] = mapped_column(String(200), default="", server_default="")


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (CheckConstraint("duration_min > 0", name="duration_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)  # spoken, lower case: "oil change"
    duration_min: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    active: Mapped[bool] = mapped_column(default=True, server_default=true())


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phone: Mapped[str] = mapped_column(String(32), unique=True)  # E.164
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(254))
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint(_one_of("status", BOOKING_STATUSES), name="status_known"),
        CheckConstraint('start < "end"', name="start_before_end"),
        Index("ix_bookings_start", "start"),
        Index("ix_bookings_customer_id", "customer_id"),
        # The admin list filters by status and date, and by service and date (revision 0003).
        Index("ix_bookings_status_start", "status", "start"),
        Index("ix_bookings_service_id_start", "service_id", "start"),
        Index("ix_bookings_source_call_id", "source_call_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"))
    start: Mapped[dt.datetime] = mapped_column(DateTime)  # business-local, naive
    end: Mapped[dt.datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16))
    # Not a foreign key: the call log has its own retention, and a booking made by the agent outlives it.
    source_call_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)
    # Set when a staff member has looked at what the agent booked (admin app "mark reviewed").
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(String(255))


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)  # "A1042": one letter and digits
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    description: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(100))  # spoken as is: "ready for pickup"


# Callers' order numbers are matched case-blind (tools.catalog); an index on the expression keeps that an
# index lookup among many orders (revision 0003).
Index("ix_orders_number_upper", func.upper(Order.number))


class InventoryItem(Base):
    __tablename__ = "inventory_items"
    __table_args__ = (CheckConstraint("quantity >= 0", name="quantity_not_negative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    aliases: Mapped[str] = mapped_column(Text, default="", server_default="")  # comma separated spoken names
    quantity: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))

    @property
    def alias_list(self) -> list[str]:
        return [alias.strip() for alias in self.aliases.split(",") if alias.strip()]


class KnowledgeArticle(Base):
    __tablename__ = "knowledge_articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        CheckConstraint(_one_of("transport", TRANSPORTS), name="transport_known"),
        CheckConstraint(
            f"hangup_by IS NULL OR {_one_of('hangup_by', HANGUP_PARTIES)}", name="hangup_by_known"
        ),
        CheckConstraint(f"status IS NULL OR {_one_of('status', CALL_STATUSES)}", name="status_known"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # SIP Call-ID (or Twilio CallSid)
    from_number: Mapped[str] = mapped_column(String(255))
    to_uri: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    hangup_by: Mapped[str | None] = mapped_column(String(16))
    transport: Mapped[str] = mapped_column(String(16), default="sip", server_default="sip")
    # Progress as the carrier reports it (Twilio status callbacks); only ever moves forward.
    status: Mapped[str | None] = mapped_column(String(16))
    status_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    direction: Mapped[str | None] = mapped_column(String(16))  # inbound, outbound-api, outbound-dial
    duration_s: Mapped[int | None] = mapped_column(Integer)  # Twilio's CallDuration, once completed
    answered_by: Mapped[str | None] = mapped_column(String(32))  # answering machine detection result


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        CheckConstraint(_one_of("speaker", SPEAKERS), name="speaker_known"),
        Index("ix_turns_call_id_index", "call_id", "index", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # 0-based position in the call
    speaker: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    stt_ms: Mapped[float | None] = mapped_column()
    e2e_ms: Mapped[float | None] = mapped_column()
    intent: Mapped[str | None] = mapped_column(String(64))
    telemetry: Mapped[str | None] = mapped_column(Text)  # JSON object: the turn's timings and outcome


class ToolInvocation(Base):
    __tablename__ = "tool_invocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Not a foreign key: the toolbox records invocations before the call row may have been written.
    call_id: Mapped[str | None] = mapped_column(String(255), index=True)
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[str] = mapped_column(Text)  # JSON
    result: Mapped[str | None] = mapped_column(Text)  # JSON, absent when the tool failed
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(255))  # "agent", "agent:<call id>", "seed", a staff login
    action: Mapped[str] = mapped_column(String(64))  # "booking.create", "booking.cancel"...
    entity: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)


class AdminUser(Base):
    """A staff login for the admin app. `password_hash` is a self-describing scrypt string (crm.passwords)."""

    __tablename__ = "admin_users"
    __table_args__ = (CheckConstraint(_one_of("role", ADMIN_ROLES), name="role_known"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)
    # Every session cookie and API token carries the value it was issued under and is refused once this
    # moves on: signing out, a password change or deactivation bumps it (revision 0006).
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


# --- transactional outbox (workers/) ------------------------------------------------------------------

OUTBOX_STATUSES = ("pending", "delivered", "dead")
# Where an outbox message is applied: the CRM database itself, or the external CRM's webhook.
OUTBOX_DESTINATIONS = ("crm", "external")


class OutboxMessage(Base):
    """A write decided during a call, recorded before the caller is told, delivered later by a worker.

    `next_attempt_at` doubles as a lease: the dispatcher pushes it forward when it hands the message to a
    worker, so a message whose task was lost (worker SIGKILLed, broker restarted) becomes due again.
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (
        CheckConstraint(_one_of("status", OUTBOX_STATUSES), name="status_known"),
        CheckConstraint(_one_of("destination", OUTBOX_DESTINATIONS), name="destination_known"),
        Index("ix_outbox_messages_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(64))  # "booking.create", "call.summary", "analytics.event"...
    destination: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)  # JSON
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class AppliedWrite(Base):
    """The CRM-side idempotency record: a key here means its write is in the CRM, in the same commit."""

    __tablename__ = "applied_writes"

    idempotency_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(Text, default="", server_default="")  # JSON
    applied_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)


class DeadLetter(Base):
    """An outbox message that exhausted its retries, kept with its last error until someone replays it."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox_messages.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utc_now)
    replayed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
