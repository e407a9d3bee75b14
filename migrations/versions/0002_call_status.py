"""Call progress on the call log: status (Twilio status callbacks), direction, duration, AMD result.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

All columns are nullable additions, so existing rows (SIP calls logged before this revision) stay valid.
The status list is written out here rather than imported from crm.models: a revision must not change when
application code does.

SQLite cannot add a table CHECK constraint to an existing table, and batch mode's way round it (copy the
table, drop the old one, rename) must not be used on `calls`: with foreign keys on, SQLite's DROP TABLE
first deletes every row, and `turns` cascades from `calls`, so every transcript would go with it. SQLite
does take a CHECK as a column constraint in ADD COLUMN, under the same name, so that is what it gets.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUS_CHECK = (
    "status IS NULL OR status IN ('queued', 'initiated', 'ringing', 'in-progress', 'completed', "
    "'busy', 'no-answer', 'failed', 'canceled')"
)


_COLUMNS = (
    ("status_at", sa.DateTime()),
    ("direction", sa.String(length=16)),
    ("duration_s", sa.Integer()),
    ("answered_by", sa.String(length=32)),
)


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def upgrade() -> None:
    if _is_sqlite():
        op.execute(
            "ALTER TABLE calls ADD COLUMN status VARCHAR(16) "
            f"CONSTRAINT ck_calls_status_known CHECK ({_STATUS_CHECK})"
        )
    else:
        op.add_column("calls", sa.Column("status", sa.String(length=16), nullable=True))
        op.create_check_constraint(op.f("ck_calls_status_known"), "calls", sa.text(_STATUS_CHECK))
    for name, type_ in _COLUMNS:
        op.add_column("calls", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(_COLUMNS):
        _drop_column(name)
    if not _is_sqlite():
        op.drop_constraint(op.f("ck_calls_status_known"), "calls", type_="check")
    _drop_column("status")  # on SQLite its column CHECK goes with it


def _drop_column(name: str) -> None:
    if _is_sqlite():
        # SQLite >= 3.35 drops a column in place; Alembic would recreate the table (see above).
        op.execute(f"ALTER TABLE calls DROP COLUMN {name}")
    else:
        op.drop_column("calls", name)
