"""services/common/redis_batch.py: commands of one tick share a pipeline; each caller gets its own reply."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.lua import LuaScript
from services.common.redis_batch import BatcherClosed, CommandBatcher, pack_args, pack_command
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


async def _silent_server(close_after_first_read: bool) -> tuple[asyncio.Server, int]:
    """A TCP server that reads commands and never answers (or closes the connection once it has some)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            if not close_after_first_read:
                await reader.read()  # hold the connection open, silent, until the client drops it
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_connection_lost_mid_pipeline_fails_its_callers_and_the_next_command_reconnects(
        redis_url: str) -> None:
    server, port = await _silent_server(close_after_first_read=True)
    async with server:
        client = connect(f"redis://127.0.0.1:{port}/0")
        batcher = CommandBatcher(client)
        results = await asyncio.gather(batcher.execute("PING"), batcher.execute("PING"), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        # The batcher opens a new connection for the next command (to the same silent server: it fails again).
        with pytest.raises(ConnectionError):
            await batcher.execute("PING")
        await batcher.close()
        await client.aclose()


async def test_a_connection_that_never_answers_times_out() -> None:
    server, port = await _silent_server(close_after_first_read=False)
    async with server:
        client = connect(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
        batcher = CommandBatcher(client)
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(batcher.execute("PING"), 5)
        await batcher.close()
        await client.aclose()


async def test_the_url_database_is_selected(redis_url: str, key_prefix: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    other = connect(f"{base}/5")
    batcher = CommandBatcher(other)
    try:
        await batcher.execute("SET", f"{key_prefix}db5", "here")
        assert await other.get(f"{key_prefix}db5") == b"here"
    finally:
        await other.delete(f"{key_prefix}db5")
        await batcher.close()
        await other.aclose()


def test_pack_command_is_resp_of_every_argument_type() -> None:
    assert pack_command(("SET", b"k\r\n", 12, -3, 1.5, memoryview(b"mv"))) == (
        b"*6\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$2\r\n-3\r\n$3\r\n1.5\r\n$2\r\nmv\r\n")
    assert pack_command(("SET", "é")) == b"*2\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n"
    with pytest.raises(DataError):
        pack_command(("SET", True))


async def test_evalsha_packed_runs_the_script_after_noscript(redis: Redis, key_prefix: str) -> None:
    batcher = CommandBatcher(redis)
    await redis.set(f"{key_prefix}e", "stored")
    script = _fresh_script()
    reply = await batcher.evalsha_packed(script, 1, pack_args((f"{key_prefix}e", "arg")), 2)
    assert reply == [b"arg", b"stored"]
    await batcher.close()
