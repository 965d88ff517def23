"""Incremental aggregates, kept in the persister's batch transaction: 1-minute candles per instrument and
hourly positions per client and instrument, both fed only by the trades the batch really inserted.

The aggregate tables are this package's: it reads them (market.py, positions.py), reconciles them
(settlement.py) and writes them here. The persister inserts a batch's trades, keeps the ones that were
new, and calls add_trades() in the same transaction, so a redelivered batch adds nothing twice. Every
merge is commutative (sums, min/max, the earliest/latest trade by (executed_at, seq)), so concurrent
workers may commit in any order; rows are upserted in key order, so they lock in one order too.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

# One statement, both upserts (the candles one as a data-modifying CTE): one round trip per batch.
_TEMPLATE = f"""
WITH new AS (
    SELECT trade_id, instrument, seq, price, quantity, buyer_client_id, seller_client_id, executed_at
    FROM {{new_trades}}
), candles AS (
    INSERT INTO candles_1m AS c
    SELECT instrument, date_bin('1 minute', executed_at, {EPOCH}) AS bucket,
           (array_agg(price ORDER BY executed_at, seq))[1], min(executed_at),
           (array_agg(seq ORDER BY executed_at, seq))[1],
           max(price), min(price),
           (array_agg(price ORDER BY executed_at DESC, seq DESC))[1], max(executed_at),
           (array_agg(seq ORDER BY executed_at DESC, seq DESC))[1],
           sum(quantity), sum(price * quantity), count(*)
    FROM new GROUP BY instrument, bucket ORDER BY instrument, bucket
    ON CONFLICT (instrument, bucket_start) DO UPDATE SET
        open = CASE WHEN (EXCLUDED.open_at, EXCLUDED.open_seq) < (c.open_at, c.open_seq)
                    THEN EXCLUDED.open ELSE c.open END,
        open_seq = CASE WHEN (EXCLUDED.open_at, EXCLUDED.open_seq) < (c.open_at, c.open_seq)
                        THEN EXCLUDED.open_seq ELSE c.open_seq END,
        open_at = LEAST(c.open_at, EXCLUDED.open_at),
        high = GREATEST(c.high, EXCLUDED.high),
        low = LEAST(c.low, EXCLUDED.low),
        close = CASE WHEN (EXCLUDED.close_at, EXCLUDED.close_seq) > (c.close_at, c.close_seq)
                     THEN EXCLUDED.close ELSE c.close END,
        close_seq = CASE WHEN (EXCLUDED.close_at, EXCLUDED.close_seq) > (c.close_at, c.close_seq)
                         THEN EXCLUDED.close_seq ELSE c.close_seq END,
        close_at = GREATEST(c.close_at, EXCLUDED.close_at),
        volume = c.volume + EXCLUDED.volume,
        quote_volume = c.quote_volume + EXCLUDED.quote_volume,
        trade_count = c.trade_count + EXCLUDED.trade_count
)
INSERT INTO client_positions_1h AS p
SELECT client_id, instrument, date_bin('1 hour', executed_at, {EPOCH}) AS hour,
       sum(bought), sum(bought_quote), sum(sold), sum(sold_quote), count(DISTINCT trade_id)
FROM (
    SELECT buyer_client_id AS client_id, instrument, executed_at, trade_id,
           quantity AS bought, price * quantity AS bought_quote, 0 AS sold, 0 AS sold_quote FROM new
    UNION ALL
    SELECT seller_client_id, instrument, executed_at, trade_id, 0, 0, quantity, price * quantity FROM new
) AS sides
GROUP BY client_id, instrument, hour ORDER BY client_id, instrument, hour
ON CONFLICT (client_id, instrument, hour_start) DO UPDATE SET
    bought_quantity = p.bought_quantity + EXCLUDED.bought_quantity,
    bought_quote = p.bought_quote + EXCLUDED.bought_quote,
    sold_quantity = p.sold_quantity + EXCLUDED.sold_quantity,
    sold_quote = p.sold_quote + EXCLUDED.sold_quote,
    trade_count = p.trade_count + EXCLUDED.trade_count
"""


async def add_trades(conn: AsyncConnection, new_trades: str) -> None:
    """Fold the trades of table `new_trades` (shaped like `trades`; only trades just inserted) into the
    aggregates, in the caller's transaction."""
    await conn.execute(text(_TEMPLATE.format(new_trades=new_trades)))
