"""services/common/slots.py on the local cluster: a MULTI of one instrument's keys waits out its slot's move."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import RedisCluster

from services.common.slots import AnyPipeline, is_cluster, transaction
from tests.cluster.conftest import LocalCluster

pytestmark = pytest.mark.slow


async def test_a_transaction_runs_once_on_the_master_of_its_slot(
        cluster_client: RedisCluster, redis_cluster: LocalCluster, cluster_symbols: list[str]) -> None:
    assert is_cluster(cluster_client)
    for symbol in cluster_symbols:
        key = f"test-{uuid.uuid4().hex[:8]}:h:{{{symbol}}}"

        def queue(pipe: AnyPipeline, key: str = key) -> None:
            pipe.delete(key)
            pipe.hset(key, mapping={"a": "1", "b": "2"})

        assert await transaction(cluster_client, queue) == [0, 2]
        assert redis_cluster.client(redis_cluster.master_of(symbol)).hgetall(key) == {b"a": b"1", b"b": b"2"}
        await cluster_client.delete(key)


async def test_a_transaction_on_a_moving_slot_waits_for_the_move_and_runs_once(
        cluster_client: RedisCluster, redis_cluster: LocalCluster, cluster_symbols: list[str]) -> None:
    symbol = cluster_symbols[0]
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    stream, dead = f"{prefix}trades:{{{symbol}}}", f"{prefix}deadletter:{{{symbol}}}"
    entry = await cluster_client.xadd(stream, {"n": "1"})
    await cluster_client.xgroup_create(stream, "g", id="0")
    await cluster_client.xreadgroup("g", "c", {stream: ">"})
    source = redis_cluster.master_of(symbol)
    target = next(p for p in redis_cluster.nodes if p != source)

    def dead_letter(pipe: AnyPipeline) -> None:
        # The persister's dead_letter: XADD to a stream that does not exist yet, XACK the entry.
        pipe.xadd(dead, {"id": entry.decode()})
        pipe.xack(stream, "g", entry)

    move = await asyncio.to_thread(redis_cluster.begin_move, symbol, target)
    try:
        running = asyncio.create_task(transaction(cluster_client, dead_letter))
        await asyncio.sleep(0.5)
        assert not running.done()  # ASK inside the MULTI: aborted, nothing ran, tried again
        await asyncio.to_thread(move.migrate_keys)
        await asyncio.sleep(0.3)
        assert not running.done()
    finally:
        await asyncio.to_thread(move.finish)
    try:
        replies = await asyncio.wait_for(running, 10)
        assert replies[1] == 1
        assert await cluster_client.xlen(dead) == 1
        assert (await cluster_client.xpending(stream, "g"))["pending"] == 0
        assert redis_cluster.client(target).exists(dead)
    finally:
        await asyncio.to_thread(redis_cluster.move_slot, symbol, source)
        await cluster_client.delete(stream, dead)
