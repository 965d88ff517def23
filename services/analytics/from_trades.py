"""The same answers computed from scratch over `trades`: the reference the aggregates must equal
(tests, the settlement's reconciliation, and the benchmark's comparison)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.analytics.aggregates import EPOCH
from services.analytics.stats import Candle, Positions, Sides, Stats, fold_positions

_STATS = """
(array_agg(price ORDER BY executed_at, seq))[1], max(price), min(price),
(array_agg(price ORDER BY executed_at DESC, seq DESC))[1], sum(quantity), sum(price * quantity), count(*)
"""
WINDOW = text(f"""SELECT {_STATS} FROM trades
WHERE instrument = :instrument AND executed_at >= :start AND executed_at < :end""")
CANDLES = text(f"""
SELECT date_bin(:interval, executed_at, {EPOCH}) AS bucket, {_STATS} FROM trades
WHERE instrument = :instrument AND executed_at >= :first AND executed_at < :stop
GROUP BY bucket ORDER BY bucket
""")
# One row per side of each trade; a self-trade's seller side adds no second trade to the count.
_SIDES = """
SELECT buyer_client_id AS client_id, instrument, executed_at, quantity AS bq, price * quantity AS bquote,
       0 AS sq, 0 AS squote, 1 AS n FROM trades WHERE executed_at < :as_of {client_buy}
UNION ALL
SELECT seller_client_id, instrument, executed_at, 0, 0, quantity, price * quantity,
       CASE WHEN buyer_client_id = seller_client_id THEN 0 ELSE 1 END FROM trades
WHERE executed_at < :as_of {client_sell}
"""
CLIENT = text(f"""
SELECT instrument, sum(bq), sum(bquote), sum(sq), sum(squote), sum(n)
FROM ({_SIDES.format(client_buy="AND buyer_client_id = :client_id",
                     client_sell="AND seller_client_id = :client_id")}) AS sides
GROUP BY instrument ORDER BY instrument
""")
ALL_CLIENTS = text(f"""
SELECT client_id, instrument, sum(bq), sum(bquote), sum(sq), sum(squote), sum(n),
       sum(bq) FILTER (WHERE executed_at >= :since), sum(bquote) FILTER (WHERE executed_at >= :since),
       sum(sq) FILTER (WHERE executed_at >= :since), sum(squote) FILTER (WHERE executed_at >= :since),
       sum(n) FILTER (WHERE executed_at >= :since)
FROM ({_SIDES.format(client_buy="", client_sell="")}) AS sides
GROUP BY client_id, instrument ORDER BY client_id, instrument
""")


async def window_stats(conn: AsyncConnection, instrument: str, start: dt.datetime, end: dt.datetime) -> Stats:
    params = {"instrument": instrument, "start": start, "end": end}
    return Stats.of((await conn.execute(WINDOW, params)).one())


async def candles(conn: AsyncConnection, instrument: str, first: dt.datetime, stop: dt.datetime,
                  interval: dt.timedelta) -> list[Candle]:
    params = {"instrument": instrument, "first": first, "stop": stop, "interval": interval}
    return [Candle(row[0], Stats.of(row[1:])) for row in (await conn.execute(CANDLES, params)).all()]


async def client_positions(conn: AsyncConnection, client_id: str, as_of: dt.datetime) -> dict[str, Sides]:
    rows = (await conn.execute(CLIENT, {"client_id": client_id, "as_of": as_of})).all()
    return {row[0]: Sides.of(row[1:]) for row in rows}


async def all_positions(conn: AsyncConnection, as_of: dt.datetime, since: dt.datetime
                        ) -> tuple[Positions, Positions]:
    return fold_positions((await conn.execute(ALL_CLIENTS, {"as_of": as_of, "since": since})).all())
