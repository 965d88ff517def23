"""The incremental aggregates equal the from-scratch computation over `trades`: after a random burst
written by concurrent workers in random batches (some delivered twice), and after the migration's backfill."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.analytics import from_trades, market, positions
from services.analytics.time_buckets import DAY, HOUR, MINUTE, MS, ceil_to, floor_to, now_ms
from services.common.db import downgrade, migrate, trades
from services.common.instruments import Instruments
from services.persister.rows import TradeRow
from tests.analytics.conftest import trade, write

CLIENTS = ("client-A", "client-B", "client-C", "client-D")
INTERVALS = (MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, DAY)


def burst(rng: random.Random, instruments: Instruments, count: int, start: dt.datetime) -> list[TradeRow]:
    """Trades over 3 hours from `start`; coarse times so that many share a millisecond (seq decides)."""
    rows = []
    for symbol, instrument in sorted(instruments.items()):
        mid = 50_000 if symbol == "BTC-USD" else 3_000
        times = sorted(start + rng.randrange(0, 3 * 3600 * 4) * 250 * MS for _ in range(count))
        for seq, moment in enumerate(times, start=1):
            buyer = rng.choice(CLIENTS)
            seller = buyer if rng.random() < 0.1 else rng.choice(CLIENTS)
            price = Decimal(mid) + rng.randint(-500, 500) * instrument.tick
            quantity = rng.randint(instrument.min_lots, instrument.min_lots * 5000) * instrument.lot
            rows.append(trade(symbol, seq, moment, str(price), str(quantity), buyer, seller))
    return rows


async def _worker(db: AsyncEngine, batches: list[list[TradeRow]]) -> None:
    for batch in batches:
        await write(db, batch)


async def assert_aggregates_match(db: AsyncEngine, rng: random.Random, start: dt.datetime, end: dt.datetime) -> None:
    async with db.connect() as conn:
        for symbol in ("BTC-USD", "ETH-USD"):
            for interval in INTERVALS:
                first, stop = floor_to(start, interval), ceil_to(end, interval)
                fast = await market.candles(conn, symbol, first, stop, interval)
                assert fast == await from_trades.candles(conn, symbol, first, stop, interval), (symbol, interval)
                assert fast
            for _ in range(10):
                lo = start + rng.randrange(0, int((end - start) / MS)) * MS
                hi = lo + rng.choice((MINUTE, HOUR, DAY, rng.randrange(1, 10**7) * MS))
                assert await market.window_stats(conn, symbol, lo, hi) == \
                    await from_trades.window_stats(conn, symbol, lo, hi), (symbol, lo, hi)
        for client in CLIENTS:
            for as_of in (end, start + rng.randrange(0, int((end - start) / MS)) * MS, ceil_to(start, HOUR)):
                fast_client = await positions.client_positions(conn, client, as_of)
                assert fast_client == await from_trades.client_positions(conn, client, as_of), (client, as_of)
        as_of = ceil_to(end, HOUR)
        assert await positions.all_positions(conn, as_of, as_of - 2 * HOUR) == \
            await from_trades.all_positions(conn, as_of, as_of - 2 * HOUR)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_aggregates_equal_the_trades_after_a_random_burst(db: AsyncEngine, instruments: Instruments,
                                                                seed: int) -> None:
    rng = random.Random(seed)
    start = floor_to(now_ms() - 5 * HOUR, MINUTE) + rng.randrange(0, 60_000) * MS
    rows = burst(rng, instruments, 300, start)
    rng.shuffle(rows)
    batches: list[list[TradeRow]] = []
    while rows:
        size = rng.randint(1, 80)
        batches.append(rows[:size])
        rows = rows[size:]
    # Some batches are delivered again (a worker died before acking): the trades insert ignores them,
    # and so must the aggregates.
    batches += rng.sample(batches, len(batches) // 4)
    rng.shuffle(batches)
    await asyncio.gather(*(_worker(db, batches[i::3]) for i in range(3)))
    await assert_aggregates_match(db, rng, start, start + 3 * HOUR)


async def test_migration_fills_the_aggregates_from_existing_trades(make_db: Any, instruments: Instruments) -> None:
    url = await make_db()
    await downgrade(url, revision="0001")
    rng = random.Random(7)
    start = floor_to(now_ms() - 4 * HOUR, HOUR)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(trades), [msgspec.structs.asdict(r) for r in burst(rng, instruments, 200, start)])
        await engine.dispose()
        await migrate(url)
        await assert_aggregates_match(engine, rng, start, start + 3 * HOUR)
    finally:
        await engine.dispose()
