"""services/common/redis_cluster_batch.py against a real 3-master cluster: routing, MOVED, ASK, TRYAGAIN."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import TryAgainError

from services.common import redis_cluster_batch
from services.common.lua import LuaScript
from services.common.redis_batch import BatcherClosed, CommandBatcher
from services.common.redis_cluster_batch import ClusterBatcher, _first_key, make_batcher
from services.common.redis_conn import connect
from tests.cluster.conftest import LocalCluster, assert_not_resent

pytestmark = pytest.mark.slow

# A side effect to count, and a guard key nothing writes: KEYS = counter, guard (as every instrument script).
GUARDED_INCR = "return redis.call('INCR', KEYS[1])"


def _script(source: str) -> LuaScript:
    script = LuaScript.__new__(LuaScript)
    script.name = "test.lua"
    script.source = source
    script.sha = hashlib.sha1(source.encode()).hexdigest()
    return script


@pytest.fixture
async def batcher(cluster_client: RedisCluster) -> AsyncIterator[ClusterBatcher]:
    batcher = ClusterBatcher(cluster_client)
    yield batcher
    await batcher.close()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


def _sent_to(batcher: ClusterBatcher, port: int) -> int:
    return sum(b.commands_sent for (_, p), b in batcher._nodes.items() if p == port)


def _other_master(redis_cluster: LocalCluster, symbol: str) -> int:
    return next(p for p in redis_cluster.nodes if p != redis_cluster.master_of(symbol))


def test_the_first_key_of_a_packed_command() -> None:
    from services.common.redis_batch import pack_command
    assert _first_key(pack_command(("HGET", "a:{X}", "f"))) == b"a:{X}"
    assert _first_key(pack_command(("EVALSHA", "0" * 40, 2, "k1", "k2", "arg"))) == b"k1"
    assert _first_key(pack_command(("EVALSHA", "0" * 40, 0, "arg"))) is None
    assert _first_key(pack_command(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s:{X}", ">"))) \
        == b"s:{X}"
    assert _first_key(pack_command(("PING",))) is None
    assert _first_key(pack_command(("script", "load", "return 1"))) is None


def test_the_first_key_of_a_command_not_packed_yet(batcher: ClusterBatcher) -> None:
    for _ in range(2):  # learnt, then from what was learnt
        assert batcher._key_of_args(("HGET", "a:{X}", "f")) == b"a:{X}"
        assert batcher._key_of_args((b"ZADD", b"z:{X}", 1, "m")) == b"z:{X}"
        assert batcher._key_of_args(("EVALSHA", "0" * 40, 1, "k:{X}", "arg")) == b"k:{X}"
        assert batcher._key_of_args(("XREAD", "COUNT", 1, "STREAMS", "s:{X}", "0")) == b"s:{X}"
        assert batcher._key_of_args(("GET", 12)) == b"12"
        assert batcher._key_of_args(("PING",)) is None
        assert batcher._key_of_args(("SCRIPT", "LOAD", "return 1")) is None


async def test_each_command_goes_to_the_master_of_its_slot(redis_cluster: LocalCluster, batcher: ClusterBatcher,
                                                           cluster_symbols: list[str], prefix: str) -> None:
    keys = {symbol: f"{prefix}k:{{{symbol}}}" for symbol in cluster_symbols}
    replies = await asyncio.gather(*(batcher.execute("SET", key, symbol) for symbol, key in keys.items()))
    assert replies == [b"OK"] * 3
    for symbol, key in keys.items():
        # Each key is on its own master, and a plain client of that master reads it without a redirection.
        assert redis_cluster.client(redis_cluster.master_of(symbol)).get(key) == symbol.encode()
        assert _sent_to(batcher, redis_cluster.master_of(symbol)) >= 1
    # One tick of 30 commands over 3 masters: one pipeline per master.
    before = batcher.pipelines_sent
    values = await asyncio.gather(*(batcher.execute("GET", keys[s]) for s in cluster_symbols for _ in range(10)))
    assert values == [s.encode() for s in cluster_symbols for _ in range(10)]
    assert batcher.pipelines_sent - before == 3
    assert await batcher.execute("PING") == b"PONG"


async def test_a_script_is_loaded_on_every_master_it_runs_on(redis_cluster: LocalCluster, batcher: ClusterBatcher,
                                                             cluster_symbols: list[str], prefix: str) -> None:
    script = _script(f"-- {uuid.uuid4()}\nreturn redis.call('INCR', KEYS[1])")
    replies = await asyncio.gather(*(batcher.evalsha(script, [f"{prefix}n:{{{s}}}"], []) for s in cluster_symbols))
    assert replies == [1, 1, 1]
    assert all(redis_cluster.client(p).script_exists(script.sha) == [True] for p in redis_cluster.nodes)


async def test_a_moved_slot_is_followed_and_the_map_updated(redis_cluster: LocalCluster, batcher: ClusterBatcher,
                                                            cluster_symbols: list[str], prefix: str) -> None:
    symbol = cluster_symbols[0]
    key = f"{prefix}k:{{{symbol}}}"
    source, target = redis_cluster.master_of(symbol), _other_master(redis_cluster, symbol)
    assert await batcher.execute("SET", key, "v") == b"OK"
    redis_cluster.move_slot(symbol, target)
    try:
        assert await batcher.execute("GET", key) == b"v"  # MOVED from the source, then the target
        sent_to_source = _sent_to(batcher, source)
        assert await batcher.execute("INCR", f"{prefix}n:{{{symbol}}}") == 1
        assert _sent_to(batcher, source) == sent_to_source  # straight to the new master
    finally:
        redis_cluster.move_slot(symbol, source)
    assert await batcher.execute("GET", key) == b"v"


async def test_ask_is_followed_during_a_migration(redis_cluster: LocalCluster, batcher: ClusterBatcher,
                                                  cluster_symbols: list[str], prefix: str) -> None:
    symbol = cluster_symbols[1]
    moved_key, staying_key = f"{prefix}a:{{{symbol}}}", f"{prefix}b:{{{symbol}}}"
    assert await asyncio.gather(batcher.execute("SET", moved_key, "a"), batcher.execute("SET", staying_key, "b")) \
        == [b"OK", b"OK"]
    source, target = redis_cluster.master_of(symbol), _other_master(redis_cluster, symbol)
    move = redis_cluster.begin_move(symbol, target)
    try:
        redis_cluster.client(source).execute_command("MIGRATE", "127.0.0.1", target, moved_key, 0, 5000)
        # Many at once: ASKING must stay next to its command even within busy pipelines.
        keys = [moved_key, staying_key] * 20
        replies = await asyncio.gather(*(batcher.execute("GET", k) for k in keys))
        assert replies == [b"a", b"b"] * 20
        assert await batcher.execute("SET", f"{prefix}new:{{{symbol}}}", "n") == b"OK"  # a new key: ASK too
    finally:
        move.finish()
        redis_cluster.move_slot(symbol, source)
    assert await batcher.execute("GET", f"{prefix}new:{{{symbol}}}") == b"n"


async def test_a_guarded_script_waits_out_a_migration_and_applies_once(
        redis_cluster: LocalCluster, batcher: ClusterBatcher, cluster_symbols: list[str], prefix: str) -> None:
    symbol = cluster_symbols[2]
    counter, guard = f"{prefix}count:{{{symbol}}}", f"{prefix}guard:{{{symbol}}}"
    script = _script(GUARDED_INCR)
    assert await batcher.evalsha(script, [counter, guard], []) == 1
    source, target = redis_cluster.master_of(symbol), _other_master(redis_cluster, symbol)
    move = redis_cluster.begin_move(symbol, target)
    try:
        started = time.monotonic()
        call = asyncio.ensure_future(batcher.evalsha(script, [counter, guard], []))
        await asyncio.sleep(0.3)
        assert not call.done()  # TRYAGAIN, again and again: the guard is on no node
        assert redis_cluster.client(source).get(counter) == b"1"
        await asyncio.to_thread(move.finish)
        assert await call == 2  # applied once, on the new master, after the move
        assert time.monotonic() - started >= 0.3
        assert redis_cluster.client(target).get(counter) == b"2"
    finally:
        redis_cluster.move_slot(symbol, source)


async def test_tryagain_reaches_the_caller_after_the_give_up_time(
        redis_cluster: LocalCluster, batcher: ClusterBatcher, cluster_symbols: list[str], prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_cluster_batch, "TRYAGAIN_GIVE_UP_S", 0.3)
    symbol = cluster_symbols[0]
    counter, guard = f"{prefix}count:{{{symbol}}}", f"{prefix}guard:{{{symbol}}}"
    script = _script(GUARDED_INCR)
    assert await batcher.evalsha(script, [counter, guard], []) == 1
    source = redis_cluster.master_of(symbol)
    move = redis_cluster.begin_move(symbol, _other_master(redis_cluster, symbol))
    try:
        with pytest.raises(TryAgainError):
            await batcher.evalsha(script, [counter, guard], [])
        assert redis_cluster.client(source).get(counter) == b"1"
    finally:
        move.finish()
        redis_cluster.move_slot(symbol, source)


async def test_nothing_is_resent_after_a_connection_error(redis_cluster: LocalCluster, batcher: ClusterBatcher,
                                                          cluster_symbols: list[str], prefix: str) -> None:
    symbol = cluster_symbols[0]
    counter = f"{prefix}count:{{{symbol}}}"
    await assert_not_resent(redis_cluster, counter, symbol, lambda: batcher.execute("INCR", counter))


async def test_make_batcher_picks_by_mode(cluster_client: RedisCluster, redis_cluster: LocalCluster) -> None:
    cluster_batcher = make_batcher(cluster_client, "cluster")
    assert isinstance(cluster_batcher, ClusterBatcher)
    await cluster_batcher.close()
    single = connect(f"redis://127.0.0.1:{redis_cluster.nodes[0]}/0")
    single_batcher = make_batcher(single, "single")
    assert isinstance(single_batcher, CommandBatcher)
    await single_batcher.close()
    with pytest.raises(TypeError):
        make_batcher(single, "cluster")
    await single.aclose()
    with pytest.raises(BatcherClosed):
        cluster_batcher.submit("PING")
