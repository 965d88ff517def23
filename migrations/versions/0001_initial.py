"""Initial schema: orders, order_events, trades, orderbook_snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Money and quantities are NUMERIC without scale: exact for any instrument's tick and lot.
    op.create_table(
        "orders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("client_order_id", sa.Text),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("instrument", sa.Text, nullable=False),
        # The order's own fields are NULL only while a later event has landed before its
        # accepted/rejected event (several persister workers, no order among them).
        sa.Column("side", sa.Text),
        sa.Column("type", sa.Text),
        sa.Column("time_in_force", sa.Text),
        sa.Column("post_only", sa.Boolean),
        sa.Column("price", sa.Numeric),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("filled_quantity", sa.Numeric, nullable=False),
        sa.Column("remaining_quantity", sa.Numeric, nullable=False),
        sa.Column("filled_quote", sa.Numeric, nullable=False),
        sa.Column("average_price", sa.Numeric),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", TS),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("last_event_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_orders_client_created", "orders", ["client_id", "created_at"])
    op.create_index("ix_orders_instrument_status", "orders", ["instrument", "status"])

    op.create_table(
        "order_events",
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("filled_quantity", sa.Numeric, nullable=False),
        sa.Column("remaining_quantity", sa.Numeric, nullable=False),
        sa.Column("filled_quote", sa.Numeric, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("ts", TS, nullable=False),
        sa.PrimaryKeyConstraint("instrument", "seq", name="order_events_pkey"),
    )
    op.create_index("ix_order_events_order_id", "order_events", ["order_id"])

    op.create_table(
        "trades",
        sa.Column("trade_id", sa.Text, primary_key=True),
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("taker_side", sa.Text, nullable=False),
        sa.Column("taker_order_id", sa.Text, nullable=False),
        sa.Column("maker_order_id", sa.Text, nullable=False),
        sa.Column("buy_order_id", sa.Text, nullable=False),
        sa.Column("sell_order_id", sa.Text, nullable=False),
        sa.Column("buyer_client_id", sa.Text, nullable=False),
        sa.Column("seller_client_id", sa.Text, nullable=False),
        sa.Column("executed_at", TS, nullable=False),
        sa.UniqueConstraint("instrument", "seq", name="uq_trades_instrument_seq"),
    )
    op.create_index("ix_trades_instrument_executed", "trades", ["instrument", sa.text("executed_at DESC")])
    op.create_index("ix_trades_executed", "trades", [sa.text("executed_at DESC")])
    op.create_index("ix_trades_buyer", "trades", ["buyer_client_id"])
    op.create_index("ix_trades_seller", "trades", ["seller_client_id"])

    op.create_table(
        "orderbook_snapshots",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),  # BIGSERIAL
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("book_seq", sa.BigInteger, nullable=False),
        sa.Column("taken_at", TS, nullable=False),
        sa.Column("bids", JSONB, nullable=False),
        sa.Column("asks", JSONB, nullable=False),
    )
    op.create_index("ix_orderbook_snapshots_instrument_taken", "orderbook_snapshots",
                    ["instrument", sa.text("taken_at DESC")])


def downgrade() -> None:
    op.drop_table("orderbook_snapshots")
    op.drop_table("trades")
    op.drop_table("order_events")
    op.drop_table("orders")
