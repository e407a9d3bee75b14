"""Server-side sign-out: a session generation per staff login.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

Session cookies and API tokens are signed, not stored, so nothing on the server could refuse a copied
cookie after its owner signed out. Each cookie and token now carries the staff member's generation at
issue time (crm.web.auth), and signing out, a password change or deactivation bumps it, which refuses
every earlier cookie and token of that member. Existing rows start at 0; cookies issued before this
revision carry no generation and are refused, so everyone signs in once more after the upgrade.

A NOT NULL column with a server default is a plain ALTER TABLE ADD COLUMN on both databases (no batch
copy on SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "admin_users", sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("admin_users", "session_generation")
