"""A persister whose Redis connection breaks goes on where it was, including entries of a lost reply."""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.keys import PERSISTER_GROUP, instrument_keys
from tests.conftest import TWO_INSTRUMENTS
from tests.persister.proxy import TcpProxy
from tests.persister.runner import workers
from tests.persister.workload import expected, produce, settings_for, stored, wait_until_persisted, wait_until_read


async def test_entries_delivered_in_a_lost_reply_are_read_again_after_reconnecting(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    proxied = target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    # claim_idle_ms (30 s) far beyond the wait below: XAUTOCLAIM must not be what finds the entries.
    settings = settings_for(proxied, key_prefix, db_url, TWO_INSTRUMENTS, claim_idle_ms=30_000)
    try:
        async with workers(settings, instruments):
            await produce(redis, instruments, key_prefix, 100, seed=21)
            await wait_until_read(redis, instruments, key_prefix, 20)

            await proxy.cut()
            await produce(redis, instruments, key_prefix, 100, seed=22, tag="b")
            # What an XREADGROUP answered while the connection died leaves behind (Redis killed right after
            # it ran): the entries are pending for persister-1, and the worker never saw them.
            for symbol in instruments:
                keys = instrument_keys(key_prefix, symbol)
                delivered = await redis.xreadgroup(PERSISTER_GROUP, "persister-1", {keys.trades: ">", keys.events: ">"})
                assert delivered
            want = await expected(redis, instruments, key_prefix)

            await proxy.restore()
            await wait_until_persisted(db, want, 5)
            await wait_until_read(redis, instruments, key_prefix, 5)
    finally:
        await proxy.close()
    assert await stored(db) == want
