"""Poison entries go to the dead-letter stream after N deliveries; their batch-mates and the group go on."""

from __future__ import annotations

import json

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.keys import instrument_keys
from services.common.wire import fields_to_dict
from services.persister.records import deadletter_key
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


async def test_poison_entries_are_dead_lettered_and_the_group_goes_on(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    keys = instrument_keys(key_prefix, "BTC-USD")
    await produce(redis, instruments, key_prefix, 200, seed=21)
    first = fields_to_dict((await redis.xrange(keys.trades, count=1))[0][1])
    # One entry that cannot be decoded, one that PostgreSQL refuses (a second trade with seq 1).
    bad_price = {**first, "trade_id": "BTC-USD-x1", "seq": "999999", "price": "not-a-number"}
    dup_seq = {**first, "trade_id": "BTC-USD-x2"}
    poison = {
        (await redis.xadd(keys.trades, bad_price)).decode(): bad_price,  # type: ignore[arg-type]
        (await redis.xadd(keys.trades, dup_seq)).decode(): dup_seq,  # type: ignore[arg-type]
    }
    await produce(redis, instruments, key_prefix, 200, seed=22, tag="b")  # good entries after the poison
    want = await expected(redis, instruments, key_prefix, skip=frozenset((keys.trades, i) for i in poison))

    settings = settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS, claim_idle_ms=100,
                            claim_every_ms=50, max_deliveries=3)
    # One worker: with two, the duplicate could land before the trade it copies and the original
    # would be the one refused, which is right but not what this test asserts.
    async with workers(settings, instruments, 1):
        await wait_until_persisted(db, want, 20)
        await wait_until_read(redis, instruments, key_prefix, 20)
    assert await stored(db) == want
    assert await group_pending(redis, instruments, key_prefix) == 0

    dead = {fields_to_dict(f)["id"]: fields_to_dict(f)
            for _, f in await redis.xrange(deadletter_key(key_prefix, "BTC-USD"))}
    assert set(dead) == set(poison)
    for entry_id, fields in poison.items():
        assert dead[entry_id]["stream"] == keys.trades
        assert json.loads(dead[entry_id]["fields"]) == fields
        assert dead[entry_id]["deliveries"] == "3"
    bad_id, dup_id = list(poison)
    assert "price='not-a-number'" in dead[bad_id]["error"]
    assert "23505" in dead[dup_id]["error"]
    assert await redis.xlen(deadletter_key(key_prefix, "ETH-USD")) == 0
