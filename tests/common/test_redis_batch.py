"""services/common/redis_batch.py: commands of one tick share a pipeline; each caller gets its own reply."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from services.common.lua import LuaScript
from services.common.redis_batch import BatcherClosed, CommandBatcher
from services.common.redis_conn import connect


def _fresh_script() -> LuaScript:
    """A script no Redis has seen yet, so its first EVALSHA answers NOSCRIPT."""
    script = LuaScript.__new__(LuaScript)
    script.name = "fresh.lua"
    script.source = f"-- {uuid.uuid4()}\nreturn {{ARGV[1], redis.call('GET', KEYS[1])}}"
    script.sha = hashlib.sha1(script.source.encode()).hexdigest()
    return script


async def test_one_tick_of_commands_is_one_pipeline(redis: Redis, key_prefix: str) -> None:
    batcher = CommandBatcher(redis)
    await asyncio.gather(*(batcher.execute("SET", f"{key_prefix}k{i}", str(i)) for i in range(50)))
    replies = await asyncio.gather(*(batcher.execute("GET", f"{key_prefix}k{i}") for i in range(50)))
    assert replies == [str(i).encode() for i in range(50)]
    assert (batcher.pipelines_sent, batcher.commands_sent) == (2, 100)
    await batcher.close()


async def test_an_error_reaches_only_its_own_caller(redis: Redis, key_prefix: str) -> None:
    batcher = CommandBatcher(redis)
    await redis.set(f"{key_prefix}s", "x")
    good, bad = batcher.submit("GET", f"{key_prefix}s"), batcher.submit("HGET", f"{key_prefix}s", "f")
    assert await good == b"x"
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await bad
    await batcher.close()


async def test_noscript_loads_the_script_and_retries(redis: Redis, key_prefix: str) -> None:
    batcher = CommandBatcher(redis)
    script = _fresh_script()
    await redis.set(f"{key_prefix}v", "stored")
    replies = await asyncio.gather(*(batcher.evalsha(script, [f"{key_prefix}v"], [str(i)]) for i in range(3)))
    assert replies == [[str(i).encode(), b"stored"] for i in range(3)]
    assert await script.is_loaded(redis)
    await batcher.close()


async def test_a_connection_failure_reaches_every_caller() -> None:
    client = connect("redis://127.0.0.1:1/0")
    batcher = CommandBatcher(client)
    results = await asyncio.gather(batcher.execute("PING"), batcher.execute("PING"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    await batcher.close()
    await client.aclose()


async def test_backlog_beyond_the_in_flight_limit_is_sent_later(redis: Redis) -> None:
    batcher = CommandBatcher(redis, max_batch=10, max_in_flight=1)
    replies = await asyncio.gather(*(batcher.execute("ECHO", str(i)) for i in range(35)))
    assert replies == [str(i).encode() for i in range(35)]
    assert batcher.pipelines_sent == 4
    await batcher.close()


async def test_close_sends_what_is_queued_then_refuses(redis: Redis) -> None:
    batcher = CommandBatcher(redis)
    pending = batcher.submit("PING")
    await batcher.close()
    assert await pending == b"PONG"
    with pytest.raises(BatcherClosed):
        batcher.submit("PING")
