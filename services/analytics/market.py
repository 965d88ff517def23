"""Ticker and candles from the candle aggregates (candles_1m, candles_1h), plus raw trades for partial minutes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.analytics.aggregates import EPOCH
from services.analytics.stats import Candle, Stats
from services.analytics.time_buckets import HOUR, MINUTE, ceil_to, floor_to

_MERGE = """
SELECT (array_agg(open ORDER BY open_at, open_seq))[1], max(high), min(low),
       (array_agg(close ORDER BY close_at DESC, close_seq DESC))[1],
       sum(volume), sum(quote_volume), sum(trade_count)
"""
_RAW = """
SELECT price AS open, executed_at AS open_at, seq AS open_seq, price AS high, price AS low, price AS close,
       executed_at AS close_at, seq AS close_seq, quantity AS volume, price * quantity AS quote_volume,
       1 AS trade_count
FROM trades WHERE instrument = :instrument AND executed_at >= {lo} AND executed_at < {hi}
"""
_MINUTES = """
SELECT open, open_at, open_seq, high, low, close, close_at, close_seq, volume, quote_volume, trade_count
FROM candles_1m WHERE instrument = :instrument AND bucket_start >= :mid_start AND bucket_start < :mid_end
"""
WINDOW = text(f"""{_MERGE} FROM ({_MINUTES}
    UNION ALL {_RAW.format(lo=":start", hi=":mid_start")}
    UNION ALL {_RAW.format(lo=":mid_end", hi=":end")}) AS parts""")

_CANDLE_COLUMNS = """
(array_agg(open ORDER BY open_at, open_seq))[1], max(high), min(low),
(array_agg(close ORDER BY close_at DESC, close_seq DESC))[1], sum(volume), sum(quote_volume), sum(trade_count)
"""


def _merged(table: str) -> TextClause:
    """Candles of :interval merged from the stored candles of `table`, whose bucket divides :interval."""
    return text(f"""
SELECT date_bin(:interval, bucket_start, {EPOCH}) AS bucket, {_CANDLE_COLUMNS}
FROM {table} WHERE instrument = :instrument AND bucket_start >= :first AND bucket_start < :stop
GROUP BY bucket ORDER BY bucket
""")


def _stored(table: str) -> TextClause:
    """The stored candles of `table` as they are."""
    return text(f"""
SELECT bucket_start, open, high, low, close, volume, quote_volume, trade_count
FROM {table} WHERE instrument = :instrument AND bucket_start >= :first AND bucket_start < :stop
ORDER BY bucket_start
""")


MINUTE_CANDLES = _stored("candles_1m")
HOUR_CANDLES = _stored("candles_1h")
FROM_MINUTES = _merged("candles_1m")
# 1d reads hours: over its longest range (1,500 days) 36,000 rows instead of 2.16 million minutes.
FROM_HOURS = _merged("candles_1h")


async def window_stats(conn: AsyncConnection, instrument: str, start: dt.datetime, end: dt.datetime) -> Stats:
    """OHLCV of the instrument's trades executed in [start, end): whole minutes from candles_1m, the
    partial minutes at either edge from the trades themselves."""
    mid_start, mid_end = ceil_to(start, MINUTE), floor_to(end, MINUTE)
    if mid_start >= mid_end:  # no whole minute inside: all from the trades
        mid_start = mid_end = end
    row = (await conn.execute(WINDOW, {"instrument": instrument, "start": start, "end": end,
                                       "mid_start": mid_start, "mid_end": mid_end})).one()
    return Stats.of(row)


async def candles(conn: AsyncConnection, instrument: str, first: dt.datetime, stop: dt.datetime,
                  interval: dt.timedelta) -> list[Candle]:
    """Non-empty candles of `interval` whose start is in [first, stop); both UTC-aligned to `interval`. Whole
    hours (1h, 1d) from candles_1h, shorter intervals from candles_1m."""
    params = {"instrument": instrument, "first": first, "stop": stop, "interval": interval}
    if interval == MINUTE:
        query = MINUTE_CANDLES
    elif interval == HOUR:
        query = HOUR_CANDLES
    elif interval % HOUR == dt.timedelta(0):
        query = FROM_HOURS
    else:
        query = FROM_MINUTES
    rows = (await conn.execute(query, params)).all()
    return [Candle(row[0], Stats.of(row[1:])) for row in rows]
