"""Admin users, booking review columns, indexes for the admin filters and order lookups, knowledge search.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

Full-text search differs by database and is kept out of crm.models on purpose (autogenerate can neither
describe an FTS5 virtual table nor reflect an expression index):
- SQLite: an external-content FTS5 table `knowledge_articles_fts` over title and body, kept in sync by
  triggers (the pattern from the SQLite FTS5 documentation, section 4.4.3);
- PostgreSQL: a GIN index on the same english tsvector expression the search query uses, so the planner
  can use it.
New booking columns are nullable additions, added in place on SQLite for the reason given in 0002.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BOOKING_INDEXES = (
    ("ix_bookings_status_start", ["status", "start"]),
    ("ix_bookings_service_id_start", ["service_id", "start"]),
    ("ix_bookings_source_call_id", ["source_call_id"]),
)

_SQLITE_FTS = (
    "CREATE VIRTUAL TABLE knowledge_articles_fts USING fts5("
    "title, body, content='knowledge_articles', content_rowid='id', tokenize='porter unicode61')",
    "INSERT INTO knowledge_articles_fts(rowid, title, body) SELECT id, title, body FROM knowledge_articles",
    "CREATE TRIGGER knowledge_articles_fts_insert AFTER INSERT ON knowledge_articles BEGIN "
    "INSERT INTO knowledge_articles_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END",
    "CREATE TRIGGER knowledge_articles_fts_delete AFTER DELETE ON knowledge_articles BEGIN "
    "INSERT INTO knowledge_articles_fts(knowledge_articles_fts, rowid, title, body) "
    "VALUES ('delete', old.id, old.title, old.body); END",
    "CREATE TRIGGER knowledge_articles_fts_update AFTER UPDATE ON knowledge_articles BEGIN "
    "INSERT INTO knowledge_articles_fts(knowledge_articles_fts, rowid, title, body) "
    "VALUES ('delete', old.id, old.title, old.body); "
    "INSERT INTO knowledge_articles_fts(rowid, title, body) VALUES (new.id, new.title, new.body); END",
)
_SQLITE_FTS_DROP = (
    "DROP TRIGGER knowledge_articles_fts_update",
    "DROP TRIGGER knowledge_articles_fts_delete",
    "DROP TRIGGER knowledge_articles_fts_insert",
    "DROP TABLE knowledge_articles_fts",
)
# Must match the expression in crm.search, or PostgreSQL will not use the index.
_PG_FTS_INDEX = (
    "CREATE INDEX ix_knowledge_articles_fts ON knowledge_articles "
    "USING gin (to_tsvector('english', title || ' ' || body))"
)


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def upgrade() -> None:
    op.create_table(
        "admin_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'supervisor')", name=op.f("ck_admin_users_role_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_users")),
        sa.UniqueConstraint("username", name=op.f("uq_admin_users_username")),
    )
    op.add_column("bookings", sa.Column("reviewed_at", sa.DateTime(), nullable=True))
    op.add_column("bookings", sa.Column("reviewed_by", sa.String(length=255), nullable=True))
    for name, columns in _BOOKING_INDEXES:
        op.create_index(name, "bookings", columns, unique=False)
    op.create_index("ix_orders_number_upper", "orders", [sa.text("upper(number)")], unique=False)
    statements = _SQLITE_FTS if _is_sqlite() else (_PG_FTS_INDEX,)
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = _SQLITE_FTS_DROP if _is_sqlite() else ("DROP INDEX ix_knowledge_articles_fts",)
    for statement in statements:
        op.execute(statement)
    op.drop_index("ix_orders_number_upper", table_name="orders")
    for name, _ in reversed(_BOOKING_INDEXES):
        op.drop_index(name, table_name="bookings")
    for column in ("reviewed_by", "reviewed_at"):
        if _is_sqlite():
            op.execute(f"ALTER TABLE bookings DROP COLUMN {column}")
        else:
            op.drop_column("bookings", column)
    op.drop_table("admin_users")
