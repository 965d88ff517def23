"""Analytics and clearing: 1-minute candles, hourly client positions, end-of-day settlements.

The persister keeps candles_1m and client_positions_1h up to date in each batch's transaction; this
revision fills them from the trades already stored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

BACKFILL_CANDLES = f"""
INSERT INTO candles_1m
SELECT instrument, date_bin('1 minute', executed_at, {EPOCH}),
       (array_agg(price ORDER BY executed_at, seq))[1], min(executed_at),
       (array_agg(seq ORDER BY executed_at, seq))[1],
       max(price), min(price),
       (array_agg(price ORDER BY executed_at DESC, seq DESC))[1], max(executed_at),
       (array_agg(seq ORDER BY executed_at DESC, seq DESC))[1],
       sum(quantity), sum(price * quantity), count(*)
FROM trades GROUP BY 1, 2
"""

BACKFILL_POSITIONS = f"""
INSERT INTO client_positions_1h
SELECT client_id, instrument, date_bin('1 hour', executed_at, {EPOCH}),
       sum(bought), sum(bought_quote), sum(sold), sum(sold_quote), count(DISTINCT trade_id)
FROM (
    SELECT buyer_client_id AS client_id, instrument, executed_at, trade_id,
           quantity AS bought, price * quantity AS bought_quote, 0 AS sold, 0 AS sold_quote FROM trades
    UNION ALL
    SELECT seller_client_id, instrument, executed_at, trade_id, 0, 0, quantity, price * quantity FROM trades
) AS sides
GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.create_table(
        "candles_1m",
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("bucket_start", TS, nullable=False),
        sa.Column("open", sa.Numeric, nullable=False),
        sa.Column("open_at", TS, nullable=False),
        sa.Column("open_seq", sa.BigInteger, nullable=False),
        sa.Column("high", sa.Numeric, nullable=False),
        sa.Column("low", sa.Numeric, nullable=False),
        sa.Column("close", sa.Numeric, nullable=False),
        sa.Column("close_at", TS, nullable=False),
        sa.Column("close_seq", sa.BigInteger, nullable=False),
        sa.Column("volume", sa.Numeric, nullable=False),
        sa.Column("quote_volume", sa.Numeric, nullable=False),
        sa.Column("trade_count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("instrument", "bucket_start", name="candles_1m_pkey"),
    )
    op.create_table(
        "client_positions_1h",
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("hour_start", TS, nullable=False),
        sa.Column("bought_quantity", sa.Numeric, nullable=False),
        sa.Column("bought_quote", sa.Numeric, nullable=False),
        sa.Column("sold_quantity", sa.Numeric, nullable=False),
        sa.Column("sold_quote", sa.Numeric, nullable=False),
        sa.Column("trade_count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("client_id", "instrument", "hour_start", name="client_positions_1h_pkey"),
    )
    op.create_table(
        "settlements",
        sa.Column("settlement_date", sa.Date, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("asset", sa.Text, nullable=False),
        sa.Column("net", sa.Numeric, nullable=False),
        sa.Column("day_net", sa.Numeric, nullable=False),
        sa.Column("computed_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("settlement_date", "client_id", "asset", name="settlements_pkey"),
    )
    op.create_table(
        "settlement_instruments",
        sa.Column("settlement_date", sa.Date, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("bought_quantity", sa.Numeric, nullable=False),
        sa.Column("bought_quote", sa.Numeric, nullable=False),
        sa.Column("sold_quantity", sa.Numeric, nullable=False),
        sa.Column("sold_quote", sa.Numeric, nullable=False),
        sa.Column("trade_count", sa.BigInteger, nullable=False),
        sa.Column("computed_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("settlement_date", "client_id", "instrument", name="settlement_instruments_pkey"),
    )
    # Trades stored before this revision (a persister batch never sees them again).
    op.execute(BACKFILL_CANDLES)
    op.execute(BACKFILL_POSITIONS)


def downgrade() -> None:
    op.drop_table("settlement_instruments")
    op.drop_table("settlements")
    op.drop_table("client_positions_1h")
    op.drop_table("candles_1m")
