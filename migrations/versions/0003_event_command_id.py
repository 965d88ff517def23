"""order_events.command_id: the orders-stream entry id of the command that produced each event.

The matcher's heal after a restored (older) Redis reads it: every command at or below the highest id
stored was applied, so the matcher group resumes after it. Events stored before this revision keep NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites nothing, whatever the table's size.
    op.add_column("order_events", sa.Column("command_id", sa.Text))


def downgrade() -> None:
    op.drop_column("order_events", "command_id")
