"""halts: the admin kill switches in force (issue 16), one row per halted client or instrument.

Ingest's admin endpoints insert a row before the halt reaches Redis (halts:{I}) and delete it before the lift
does, so PostgreSQL holds every halt Redis may hold; the matcher's rebuild from PostgreSQL writes them back.
A repeated halt keeps its row (and its first halted_at).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "halts",
        sa.Column("scope", sa.Text, primary_key=True),
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("halted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("halted_by", sa.Text, nullable=False),
        sa.CheckConstraint("scope IN ('client', 'instrument')", name="ck_halts_scope"),
    )


def downgrade() -> None:
    op.drop_table("halts")
