"""Incremental aggregates, kept in the persister's batch transaction: 1-minute and 1-hour candles per
instrument and hourly positions per client and instrument, both fed only by the trades the batch really inserted.

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

# Candles of one bucket merged from finer candles: the first open and the last close by (time, seq),
# extremes, sums. Trades enter as candles of one trade each. Hours are merged from the batch's minutes
# exactly as the readers merge minutes into 5m/15m buckets, so an hour equals the minutes it holds.
MERGED = """
(array_agg(open ORDER BY open_at, open_seq))[1] AS open, min(open_at) AS open_at,
(array_agg(open_seq ORDER BY open_at, open_seq))[1] AS open_seq, max(high) AS high, min(low) AS low,
(array_agg(close ORDER BY close_at DESC, close_seq DESC))[1] AS close, max(close_at) AS close_at,
(array_agg(close_seq ORDER BY close_at DESC, close_seq DESC))[1] AS close_seq,
sum(volume) AS volume, sum(quote_volume) AS quote_volume, sum(trade_count) AS trade_count
"""
# The batch's new trades as candles of one trade each.
_TRADE_CANDLES = """(
    SELECT instrument, executed_at AS bucket_start, price AS open, executed_at AS open_at, seq AS open_seq,
           price AS high, price AS low, price AS close, executed_at AS close_at, seq AS close_seq,
           quantity AS volume, price * quantity AS quote_volume, 1 AS trade_count
    FROM new
) AS trade_candles"""


def _merged(source: str, bucket: str) -> str:
    """The candles of `source` merged per instrument and UTC-aligned `bucket`, in key order."""
    return f"""SELECT instrument, date_bin('{bucket}', bucket_start, {EPOCH}) AS bucket_start, {MERGED}
    FROM {source} GROUP BY 1, 2 ORDER BY 1, 2"""


# A stored candle takes in the batch's candle of the same bucket (`c` is the stored row).
_MERGE_INTO = """
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
"""

# One statement, every upsert (the candle ones as data-modifying CTEs): one round trip per batch. The
# batch's trades are folded into minutes once; candles_1m takes those, candles_1h those merged per hour.
_TEMPLATE = f"""
WITH new AS (
    SELECT trade_id, instrument, seq, price, quantity, buyer_client_id, seller_client_id, executed_at
    FROM {{new_trades}}
), minutes AS (
    {_merged(_TRADE_CANDLES, "1 minute")}
), candles AS (
    INSERT INTO candles_1m AS c SELECT * FROM minutes ORDER BY instrument, bucket_start {_MERGE_INTO}
), hours AS (
    INSERT INTO candles_1h AS c {_merged("minutes", "1 hour")} {_MERGE_INTO}
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
