"""Killing the matcher at any moment loses and doubles nothing: its results equal an uninterrupted run."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

from redis.asyncio import Redis

from services.common.db import with_database
from services.common.groups import group_lag
from services.common.instruments import Instruments
from services.common.keys import MATCHER_GROUP
from services.common.wire import decode_record
from tests.conftest import TWO_INSTRUMENTS
from tests.matcher.harness import Harness
from tests.processes import Service, free_port

ORDERS = 3000


async def _enqueue_program(harness: Harness, seed: int) -> None:
    rng = random.Random(seed)
    for n in range(ORDERS):
        if n % 10 == 9:
            await harness.cancel(f"o{rng.randrange(n)}")
            continue
        side = rng.choice(["buy", "sell"])
        if rng.random() < 0.1:
            await harness.new(side, None, str(rng.randint(1, 5)), order_id=f"o{n}", type="market")
        else:
            price = str(100 + rng.randint(-5, 5))
            await harness.new(side, price, str(rng.randint(1, 5)), order_id=f"o{n}",
                              tif=rng.choice(["GTC", "GTC", "GTC", "IOC", "FOK"]))


async def _outcome(harness: Harness) -> tuple[object, ...]:
    trades = [(t.seq, t.price, t.quantity, t.buy_order_id, t.sell_order_id) for t in await harness.trades()]
    events = [(e.seq, e.event, e.order_id, e.status, e.filled_quantity) for e in await harness.events()]
    records = {}
    for n in range(ORDERS):
        packed = await harness.redis.hget(harness.keys.order_state, f"o{n}")
        if packed is not None:
            r = decode_record(packed)
            records[f"o{n}"] = (r.filled_lots, r.status, r.reason)
    return trades, events, records, await harness.book()


async def test_killed_matcher_loses_and_doubles_nothing(redis: Redis, redis_url: str, key_prefix: str,
                                                        instruments: Instruments, tmp_path: Path,
                                                        postgres_server_url: str) -> None:
    instrument = instruments["BTC-USD"]
    reference = Harness(redis, instrument, key_prefix + "ref:")
    await reference.prepare()
    await _enqueue_program(reference, seed=7)
    await reference.run()

    crashed = Harness(redis, instrument, key_prefix + "crash:")
    await crashed.prepare()
    await _enqueue_program(crashed, seed=7)
    port = free_port()
    # Its first start finds no meta and asks PostgreSQL for a book to rebuild: a database that does not
    # exist holds none (never the default one, which a live engine may be using).
    absent = with_database(postgres_server_url, f"absent_{uuid.uuid4().hex[:12]}")
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix + "crash:", "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS),
           "MATCHER_METRICS_PORT": str(port), "MATCHER_BATCH": "2", "DATABASE_URL": absent,
           "MATCHER_CONSUMER": "test"}  # the harness's holder id: it takes the harness's lease over
    kills = 0
    while True:
        lag = await group_lag(redis, crashed.keys.orders, MATCHER_GROUP)
        assert lag is not None
        if lag[0] == 0:
            break
        service = Service("matcher", env, f"http://127.0.0.1:{port}/healthz", tmp_path / "matcher.log").start()
        await asyncio.sleep(random.uniform(0.02, 0.15))
        service.kill()
        kills += 1
    assert kills >= 2, "the matcher finished before it could be killed twice; enqueue more"
    assert (await group_lag(redis, crashed.keys.orders, MATCHER_GROUP)) == (0, 0)
    assert await _outcome(crashed) == await _outcome(reference)
