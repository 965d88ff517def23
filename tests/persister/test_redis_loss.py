"""A persister whose Redis lost every key (restart without persistence) creates its group again and goes on."""

from __future__ import annotations

from redis.asyncio import Redis

from services.common.instruments import Instruments
from services.common.keys import instrument_keys
from tests.conftest import TWO_INSTRUMENTS
from tests.persister.runner import workers
from tests.persister.workload import produce, settings_for, wait_until_read


async def test_group_is_recreated_after_redis_loses_its_data(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db_url: str) -> None:
    await produce(redis, instruments, key_prefix, 60, seed=5)
    settings = settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS)
    async with workers(settings, instruments, 1):
        await wait_until_read(redis, instruments, key_prefix, 20)
        wiped = [k async for k in redis.scan_iter(match=f"{key_prefix}*")]
        await redis.delete(*wiped)
        # The engine starts again on an empty Redis; new orders use new ids (sequences would restart
        # and collide with stored rows: the matcher's recovery prevents that, not tested here).
        await produce(redis, instruments, key_prefix, 60, seed=6, tag="after")
        await wait_until_read(redis, instruments, key_prefix, 20)
        for symbol in instruments:
            keys = instrument_keys(key_prefix, symbol)
            for key in (keys.trades, keys.events):
                [group] = await redis.xinfo_groups(key)
                assert (group["name"], group["pending"], group["lag"]) == (b"persister", 0, 0)
