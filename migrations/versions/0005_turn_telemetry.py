"""Per-turn telemetry (stt/endpoint/tool/llm/tts/e2e timings, outcome) kept with each agent turn.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21

One nullable text column holding a JSON object, added with plain ALTER TABLE ADD COLUMN: never batch mode
on `turns` or `calls` under SQLite (recreating the table would cascade-delete rows that reference it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("turns", sa.Column("telemetry", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("turns", "telemetry")
