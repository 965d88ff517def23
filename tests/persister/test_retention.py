"""Retention: streams trimmed only below every group's position, persisted final orders evicted from Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.keys import MATCHER_GROUP, InstrumentKeys, keys_by_symbol
from services.persister.metrics import PersisterMetrics
from services.persister.periodic import every_instrument
from services.persister.retention import RetentionPolicy, apply_retention, retention_job
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest import conftest as ingest
from tests.ingest.conftest import BROKER, Engine, EngineFactory
from tests.persister.runner import workers
from tests.persister.workload import settings_for, wait_until_read

# The ingest app's fixtures, for the tests of this module.
ingest_settings = ingest.ingest_settings
make_engine = ingest.make_engine

NOW = RetentionPolicy(stream_retention_s=0, order_retention_s=0)
HOUR = RetentionPolicy(stream_retention_s=3600, order_retention_s=3600)


@pytest.fixture
async def engine(make_engine: EngineFactory, db_url: str) -> Engine:
    return await make_engine(database_url=db_url)


async def persist(engine: Engine, redis_url: str, db_url: str, instruments: Instruments) -> None:
    """Run a persister until its group has read and acknowledged every trade and event."""
    settings = settings_for(redis_url, engine.settings.key_prefix, db_url, TWO_INSTRUMENTS)
    async with workers(settings, instruments, 1):
        await wait_until_read(engine.redis, instruments, engine.settings.key_prefix, 10)


async def trade_and_rest(engine: Engine) -> dict[str, dict[str, Any]]:
    """Two fills (two trades), a post-only reject and two resting buys on BTC-USD, all matched."""
    placed = {
        "sell1": await engine.place(client_id="client-B", side="sell", price="100.00", quantity="0.3"),
        "sell2": await engine.place(client_id="client-B", side="sell", price="100.01", quantity="0.2"),
        "buy": await engine.place(client_id="client-A", side="buy", price="100.05", quantity="0.5"),
        "open1": await engine.place(client_id="client-A", side="buy", price="90.00", quantity="0.1"),
        "open2": await engine.place(client_id="client-A", side="buy", price="90.00", quantity="0.2"),
        "rejected": await engine.place(client_id="client-B", side="sell", price="89.00", quantity="0.1",
                                       post_only=True),
    }
    await engine.drain()
    return placed


async def ids(redis: Redis, stream: str) -> list[bytes]:
    return [entry_id for entry_id, _ in await redis.xrange(stream)]


async def status(engine: Engine, order_id: str) -> str:
    answer = await engine.get(order_id, headers=BROKER)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


async def test_streams_are_trimmed_only_below_every_group(engine: Engine, redis_url: str, db_url: str,
                                                          instruments: Instruments, db: AsyncEngine) -> None:
    keys: InstrumentKeys = engine.keys["BTC-USD"]
    redis = engine.redis
    # Users' own groups: `audit` has read and acknowledged two events; `slow` read one trade, no ack.
    await redis.xgroup_create(keys.events, "audit", id="0", mkstream=True)
    await redis.xgroup_create(keys.trades, "slow", id="0", mkstream=True)
    await trade_and_rest(engine)
    await persist(engine, redis_url, db_url, instruments)
    read = await redis.xreadgroup("audit", "a", {keys.events: ">"}, count=2)
    await redis.xack(keys.events, "audit", *[entry_id for entry_id, _ in read[0][1]])
    await redis.xreadgroup("slow", "s", {keys.trades: ">"}, count=1)
    unmatched = await engine.place(client_id="client-A", side="buy", price="1.00", quantity="0.1")

    events, trades, orders = (await ids(redis, keys.events), await ids(redis, keys.trades),
                              await ids(redis, keys.orders))
    book = await redis.xlen(keys.book)
    assert len(trades) == 2 and len(orders) == 7 and book > 0

    # Within the age window nothing goes, whatever the groups have read.
    kept = await apply_retention(redis, db, keys, HOUR)
    assert kept.trimmed == {keys.orders: 0, keys.trades: 0, keys.events: 0, keys.book: 0}

    result = await apply_retention(redis, db, keys, NOW)
    assert result.trimmed == {keys.orders: 6, keys.trades: 0, keys.events: 2, keys.book: book}
    assert await ids(redis, keys.events) == events[2:]  # `audit` is the slowest group on events
    assert await ids(redis, keys.trades) == trades  # `slow` has the first trade pending
    # Only the command the matcher group has not read yet is left.
    assert await ids(redis, keys.orders) == orders[6:]
    assert (await redis.xrange(keys.orders))[0][1][b"order_id"] == unmatched["order_id"].encode()
    assert await redis.xlen(keys.book) == 0  # no group: trimmed by age alone

    # Once `slow` acknowledges its trade, the trades the persister acknowledged go up to `slow`'s position.
    await redis.xack(keys.trades, "slow", trades[0])
    assert (await apply_retention(redis, db, keys, NOW)).trimmed[keys.trades] == 1
    assert await ids(redis, keys.trades) == trades[1:]

    # The matcher still sees its group intact and reads the command left.
    info = {g["name"]: g for g in await redis.xinfo_groups(keys.orders)}
    assert info[MATCHER_GROUP.encode()]["lag"] == 1
    assert await engine.drain() == 1
    assert await status(engine, unmatched["order_id"]) == "open"


async def test_only_final_orders_persisted_in_postgres_are_evicted(
        engine: Engine, redis_url: str, db_url: str, instruments: Instruments, db: AsyncEngine) -> None:
    keys = engine.keys["BTC-USD"]
    redis = engine.redis
    placed = await trade_and_rest(engine)
    live = {name: (await engine.get(o["order_id"], headers=BROKER)).json() for name, o in placed.items()}
    await persist(engine, redis_url, db_url, instruments)
    # Final in Redis, not yet in PostgreSQL: an IOC remainder, and open2 cancelled (PostgreSQL says open).
    ioc = await engine.place(client_id="client-A", side="buy", price="1.00", quantity="0.1", time_in_force="IOC")
    cancel = await engine.client.post(f"/orders/{placed['open2']['order_id']}/cancel", headers=BROKER)
    assert cancel.status_code in (200, 202)
    await engine.drain()
    assert await status(engine, ioc["order_id"]) == "cancelled"
    assert await status(engine, placed["open2"]["order_id"]) == "cancelled"

    assert (await apply_retention(redis, db, keys, HOUR)).evicted == 0
    result = await apply_retention(redis, db, keys, NOW)

    assert result.evicted == 4
    left = {k.decode() for k in await redis.hkeys(keys.order_state)}
    assert left == {placed["open1"]["order_id"], placed["open2"]["order_id"], ioc["order_id"]}
    # Evicted orders are still answered, from PostgreSQL, exactly as before.
    for name in ("sell1", "sell2", "buy", "rejected"):
        answer = await engine.get(placed[name]["order_id"], headers=BROKER)
        assert answer.status_code == 200
        assert answer.json() == live[name]
    assert live["buy"]["status"] == "filled" and live["rejected"]["status"] == "rejected"
    again = await engine.client.post(f"/orders/{placed['sell1']['order_id']}/cancel", headers=BROKER)
    assert again.status_code == 409 and again.json()["status"] == "filled"

    # Once persisted, the two late final orders go too; the open order never does.
    await persist(engine, redis_url, db_url, instruments)
    assert (await apply_retention(redis, db, keys, NOW)).evicted == 2
    assert {k.decode() for k in await redis.hkeys(keys.order_state)} == {placed["open1"]["order_id"]}
    assert await status(engine, placed["open1"]["order_id"]) == "open"


async def test_loop_runs_once_per_instrument_across_workers(
        engine: Engine, redis_url: str, db_url: str, instruments: Instruments, db: AsyncEngine,
        caplog: pytest.LogCaptureFixture) -> None:
    await trade_and_rest(engine)
    await persist(engine, redis_url, db_url, instruments)
    keys = engine.keys["BTC-USD"]
    prefix = engine.settings.key_prefix
    metrics = [PersisterMetrics(), PersisterMetrics()]
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, "services.persister.retention")
    all_keys = keys_by_symbol(prefix, sorted(instruments))
    loops = [asyncio.create_task(every_instrument(
        "retention", engine.redis, all_keys, lambda k: k.retention_lock, retention_job(engine.redis, db, NOW, m),
        0.05, f"persister-{n}", stop)) for n, m in enumerate(metrics)]
    try:
        for _ in range(100):
            if await engine.redis.hlen(keys.order_state) == 1:
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*loops)

    def total(name: str, **labels: str) -> float:
        return sum(m.registry.get_sample_value(name, labels) or 0.0 for m in metrics)

    assert total("retention_evicted_orders_total") == 4  # counted once, by whichever worker held the lock
    assert total("retention_trimmed_entries_total", stream=keys.trades) == 2
    assert total("retention_trimmed_entries_total", stream=keys.orders) == 6
    runs = [r for r in caplog.records if getattr(r, "event", None) == "retention"]
    assert runs and {getattr(r, "instrument", None) for r in runs} == {"BTC-USD", "ETH-USD"}
    assert sum(getattr(r, "evicted_orders", 0) for r in runs) == 4
