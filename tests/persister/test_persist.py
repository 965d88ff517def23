"""The database holds exactly the streams' content: every trade once, every event, each order's last state."""

from __future__ import annotations

import random

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.instruments import Instruments
from services.common.keys import PERSISTER_GROUP, instrument_keys
from services.common.wire import fields_to_dict
from services.persister.records import Entry, WriteSet, decode, stream_refs
from services.persister.writer import Writer
from tests.conftest import TWO_INSTRUMENTS
from tests.persister.runner import workers
from tests.persister.workload import (
    expected,
    group_pending,
    produce,
    settings_for,
    stored,
    wait_until_persisted,
    wait_until_read,
)

FILLS_DISAGREE = text("""
    WITH fills AS (
        SELECT buy_order_id AS order_id, quantity, price * quantity AS quote FROM trades
        UNION ALL SELECT sell_order_id, quantity, price * quantity FROM trades)
    SELECT o.order_id FROM orders o
    LEFT JOIN (SELECT order_id, sum(quantity) AS q, sum(quote) AS quote FROM fills GROUP BY order_id) f
        USING (order_id)
    WHERE o.filled_quantity <> coalesce(f.q, 0) OR o.filled_quote <> coalesce(f.quote, 0)
       OR o.filled_quantity + o.remaining_quantity <> o.quantity
""")


async def reset_group(redis: Redis, instruments: Instruments, prefix: str) -> None:
    for symbol in instruments:
        keys = instrument_keys(prefix, symbol)
        for key in (keys.trades, keys.events):
            await redis.xgroup_destroy(key, PERSISTER_GROUP)


async def test_every_trade_once_and_exact_orders(redis: Redis, redis_url: str, key_prefix: str,
                                                 instruments: Instruments, db: AsyncEngine, db_url: str) -> None:
    await produce(redis, instruments, key_prefix, 700, seed=1)
    want = await expected(redis, instruments, key_prefix)
    assert len(want.trades) > 200 and len(want.orders) > 1000
    settings = settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS)

    async with workers(settings, instruments):
        await wait_until_persisted(db, want, 20)
    assert await stored(db) == want
    assert await group_pending(redis, instruments, key_prefix) == 0
    async with db.connect() as conn:
        assert (await conn.execute(FILLS_DISAGREE)).all() == []
        avg = (await conn.execute(text(
            "SELECT average_price::text FROM orders WHERE instrument = 'BTC-USD' AND filled_quantity > 0"
            " LIMIT 1"))).scalar_one()
        assert len(avg.split(".")[1]) == 2  # rounded to the 0.01 tick

    # A replay of every entry (a new group from 0) changes nothing: the writes are idempotent.
    await reset_group(redis, instruments, key_prefix)
    async with workers(settings, instruments):
        await wait_until_read(redis, instruments, key_prefix, 20)
    assert await stored(db) == want


async def test_events_in_any_order_give_the_same_orders(redis: Redis, key_prefix: str, instruments: Instruments,
                                                        make_db: object) -> None:
    """Workers commit in any order: an update landing before its accepted event, or an old event after a
    newer one, must end in the same rows as writing the events in sequence."""
    await produce(redis, instruments, key_prefix, 250, seed=2)
    want = await expected(redis, instruments, key_prefix)
    entries: list[Entry] = []
    for ref in stream_refs(key_prefix, instruments):
        entries += [Entry(ref, i.decode(), fields_to_dict(f)) for i, f in await redis.xrange(ref.key)]
    decoded = [decode(e) for e in entries]
    rng = random.Random(7)
    for attempt in range(3):
        engine = create_async_engine(await make_db())  # type: ignore[operator]
        try:
            writer = Writer(engine)
            shuffled = list(decoded)
            rng.shuffle(shuffled)
            if attempt == 2:
                shuffled.reverse()
            at = 0
            while at < len(shuffled):
                size = rng.choice((1, 1, 2, 7, 40))
                await writer.write(WriteSet.of(shuffled[at : at + size]))
                at += size
            assert await stored(engine) == want
        finally:
            await engine.dispose()


async def test_two_and_four_workers_give_the_same_database_as_one(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, make_db: object) -> None:
    await produce(redis, instruments, key_prefix, 500, seed=3)
    want = await expected(redis, instruments, key_prefix)
    results = {}
    for n in (1, 2, 4):
        url = await make_db()  # type: ignore[operator]
        engine = create_async_engine(url)
        try:
            # Small batches so that one order's events are split between workers.
            settings = settings_for(redis_url, key_prefix, url, TWO_INSTRUMENTS, batch=40)
            async with workers(settings, instruments, n):
                await wait_until_persisted(engine, want, 30)
            results[n] = await stored(engine)
        finally:
            await engine.dispose()
        assert await group_pending(redis, instruments, key_prefix) == 0
        await reset_group(redis, instruments, key_prefix)
    assert results[1] == want
    assert results[2] == results[1]
    assert results[4] == results[1]
