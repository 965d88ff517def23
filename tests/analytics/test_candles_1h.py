"""candles_1h: 1h and 1d answers read the hourly candles and equal what the trades (and the minutes) give,
over random trades of several days written in concurrent, partly replayed batches; trades at bucket edges
share milliseconds so seq decides open and close; the migration's backfill equals the persister's rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.analytics import from_trades, market
from services.analytics.aggregates import EPOCH
from services.analytics.stats import Candle, Stats
from services.analytics.time_buckets import DAY, HOUR, MINUTE, MS, ceil_to, floor_to, now_ms
from services.common.db import downgrade, migrate
from services.common.instruments import Instruments
from services.common.times import iso
from services.ingest.analytics_routes import INTERVALS, _candle
from services.persister.rows import TradeRow
from services.persister.writer import EntryRejected
from tests.analytics.conftest import trade, write
from tests.analytics.test_aggregates import CLIENTS
from tests.ingest.conftest import Engine

DAYS = 4

# candles_1h as a GROUP BY over the trades: every column, open/close times and seqs included.
HOURS_FROM_TRADES = text(f"""
SELECT instrument, date_bin('1 hour', executed_at, {EPOCH}) AS hour,
       (array_agg(price ORDER BY executed_at, seq))[1], min(executed_at),
       (array_agg(seq ORDER BY executed_at, seq))[1], max(price), min(price),
       (array_agg(price ORDER BY executed_at DESC, seq DESC))[1], max(executed_at),
       (array_agg(seq ORDER BY executed_at DESC, seq DESC))[1],
       sum(quantity), sum(price * quantity), count(*)
FROM trades GROUP BY 1, 2 ORDER BY 1, 2
""")
STORED_HOURS = text("SELECT * FROM candles_1h ORDER BY instrument, bucket_start")


def days_of_trades(rng: random.Random, instruments: Instruments, start: dt.datetime) -> list[TradeRow]:
    """Sparse random trades over DAYS days from `start`, plus clusters at hour and day edges: a trade 1 ms
    before the edge, three in its first millisecond (seq decides), one 1 ms after. And a day of its own
    holding two trades whose vwap is half a tick (half-even rounds it down, half-up would not)."""
    rows = []
    for symbol, instrument in sorted(instruments.items()):
        mid = 50_000 if symbol == "BTC-USD" else 3_000
        times = [start + rng.randrange(0, DAYS * 24 * 3600 * 4) * 250 * MS for _ in range(400)]
        edges = [ceil_to(start, DAY) + rng.randrange(0, (DAYS - 1) * 24) * HOUR for _ in range(8)]
        edges += [ceil_to(start, DAY) + DAY]  # a day edge, which is an hour edge too
        for edge in edges:
            times += [edge - MS, edge, edge, edge, edge + MS]
        times.sort()
        for seq, moment in enumerate(times, start=1):
            buyer = rng.choice(CLIENTS)
            seller = buyer if rng.random() < 0.1 else rng.choice(CLIENTS)
            price = Decimal(mid) + rng.randint(-500, 500) * instrument.tick
            quantity = rng.randint(instrument.min_lots, instrument.min_lots * 5000) * instrument.lot
            rows.append(trade(symbol, seq, moment, str(price), str(quantity), buyer, seller))
        # 0.3 at mid + 100 and 0.3 a tick higher, across an hour edge, later seqs than the day after:
        # BTC vwap 50100.005 is "50100.00" half-even.
        quiet = floor_to(start, DAY) - DAY + 6 * HOUR
        low, high = (Decimal(mid) + 100, Decimal(mid) + 100 + instrument.tick)
        rows.append(trade(symbol, len(times) + 1, quiet - MS, str(low), "0.3", "client-A", "client-B"))
        rows.append(trade(symbol, len(times) + 2, quiet, str(high), "0.3", "client-B", "client-A"))
    return rows


async def write_in_random_batches(db: AsyncEngine, rng: random.Random, rows: list[TradeRow]) -> None:
    """Shuffled batches of 1-80 trades by 3 concurrent workers; a quarter of the batches delivered twice."""
    rows = rows[:]
    rng.shuffle(rows)
    batches: list[list[TradeRow]] = []
    while rows:
        size = rng.randint(1, 80)
        batches.append(rows[:size])
        rows = rows[size:]
    batches += rng.sample(batches, len(batches) // 4)
    rng.shuffle(batches)

    async def worker(mine: list[list[TradeRow]]) -> None:
        for batch in mine:
            try:
                await write(db, batch)
            except EntryRejected:
                # Two workers inserting the same trade at once: the loser's (instrument, seq) index, which
                # ON CONFLICT (trade_id) does not arbitrate, refuses it. The persister then writes the batch
                # again entry by entry (consumer.py), when the winner's row is there to skip; so does this.
                for row in batch:
                    await write(db, [row])

    await asyncio.gather(*(worker(batches[i::3]) for i in range(3)))


def _span(rows: list[TradeRow]) -> tuple[dt.datetime, dt.datetime]:
    return min(r.executed_at for r in rows), max(r.executed_at for r in rows) + MS


@pytest.mark.parametrize("seed", [11, 12])
async def test_hours_and_days_equal_the_trades_and_the_minutes(db: AsyncEngine, instruments: Instruments,
                                                               seed: int) -> None:
    rng = random.Random(seed)
    start = floor_to(now_ms() - (DAYS + 3) * DAY, MINUTE) + rng.randrange(0, 3_600_000) * MS
    rows = days_of_trades(rng, instruments, start)
    await write_in_random_batches(db, rng, rows)
    first_ms, last_ms = _span(rows)
    async with db.connect() as conn:
        # Every column of every hour, open/close times and seqs included, as a GROUP BY over the trades.
        assert (await conn.execute(STORED_HOURS)).all() == (await conn.execute(HOURS_FROM_TRADES)).all()
        for symbol in sorted(instruments):
            for interval in (HOUR, DAY):
                first, stop = floor_to(first_ms, interval), ceil_to(last_ms, interval)
                fast = await market.candles(conn, symbol, first, stop, interval)
                params = {"instrument": symbol, "first": first, "stop": stop, "interval": interval}
                minutes = [Candle(r[0], Stats.of(r[1:]))
                           for r in (await conn.execute(market.FROM_MINUTES, params)).all()]
                assert fast == await from_trades.candles(conn, symbol, first, stop, interval), (symbol, interval)
                assert fast == minutes, (symbol, interval)
                assert len(fast) > (DAYS if interval == DAY else DAYS * 20)
                # A range that starts and ends inside the data.
                lo = ceil_to(first_ms + rng.randrange(0, DAY // MS) * MS, interval)
                hi = floor_to(last_ms - rng.randrange(0, DAY // MS) * MS, interval)
                assert await market.candles(conn, symbol, lo, hi, interval) == \
                    await from_trades.candles(conn, symbol, lo, hi, interval), (symbol, interval, lo, hi)


async def test_http_answers_for_every_interval_equal_the_trades(app: Engine, db: AsyncEngine,
                                                               instruments: Instruments) -> None:
    rng = random.Random(5)
    start = floor_to(now_ms() - (DAYS + 3) * DAY, MINUTE) + rng.randrange(0, 3_600_000) * MS
    rows = days_of_trades(rng, instruments, start)
    await write_in_random_batches(db, rng, rows)
    first_ms, last_ms = _span(rows)
    async with db.connect() as conn:
        for symbol, instrument in sorted(instruments.items()):
            for name, interval in INTERVALS.items():
                # As long a range as one answer allows, from the first trade (all of it for 1h and 1d).
                end = min(ceil_to(last_ms, interval), ceil_to(first_ms, interval) + 1500 * interval)
                answer = await app.client.get(f"/analytics/{symbol}/candles",
                                              params={"interval": name, "start": iso(first_ms), "end": iso(end)})
                assert answer.status_code == 200, answer.text
                expected = await from_trades.candles(conn, symbol, ceil_to(first_ms, interval), end, interval)
                assert answer.json() == [msgspec.to_builtins(_candle(instrument, c)) for c in expected], (symbol, name)
                assert answer.json()
        # The quiet day: one 1d candle of two trades whose vwap is half a tick, rounded half-even.
        quiet = floor_to(start, DAY) - DAY
        answer = await app.client.get("/analytics/BTC-USD/candles",
                                      params={"interval": "1d", "start": iso(quiet), "end": iso(quiet + DAY)})
        assert [(c["open"], c["close"], c["vwap"], c["trade_count"]) for c in answer.json()] == [
            ("50100.00", "50100.01", "50100.00", 2)]
        hours = await app.client.get("/analytics/BTC-USD/candles",
                                     params={"interval": "1h", "start": iso(quiet), "end": iso(quiet + DAY)})
        assert [(c["start"], c["open"], c["close"]) for c in hours.json()] == [
            (iso(quiet + 5 * HOUR), "50100.00", "50100.00"), (iso(quiet + 6 * HOUR), "50100.01", "50100.01")]


async def test_a_replayed_batch_adds_nothing_twice(db: AsyncEngine, instruments: Instruments) -> None:
    rows = days_of_trades(random.Random(3), instruments, floor_to(now_ms() - 6 * DAY, HOUR))
    await write(db, rows[:200])
    async with db.connect() as conn:
        once = (await conn.execute(STORED_HOURS)).all()
    await write(db, rows[:200])
    await write(db, rows[50:150])
    async with db.connect() as conn:
        assert (await conn.execute(STORED_HOURS)).all() == once
        assert once == (await conn.execute(HOURS_FROM_TRADES)).all()


async def test_the_migration_fills_candles_1h_from_the_minutes(make_db: Any, instruments: Instruments) -> None:
    url = await make_db()
    engine = create_async_engine(url)
    try:
        await write_in_random_batches(engine, random.Random(9),
                                      days_of_trades(random.Random(9), instruments, floor_to(now_ms() - 6 * DAY, HOUR)))
        async with engine.connect() as conn:
            kept = (await conn.execute(STORED_HOURS)).all()
        await engine.dispose()
        await downgrade(url, revision="0003")
        await migrate(url)
        async with engine.connect() as conn:
            assert (await conn.execute(STORED_HOURS)).all() == kept
            assert kept == (await conn.execute(HOURS_FROM_TRADES)).all()
    finally:
        await engine.dispose()
