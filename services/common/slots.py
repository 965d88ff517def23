"""Work that must stay within one cluster slot, in both Redis modes (docs/scale-out.md).

A `MULTI` pipeline on a Redis Cluster runs on one node and only when all its keys share a slot (redis-py 8.1's
cluster pipeline takes `transaction=True` then). While that slot is being migrated, a command whose key has left
the source is answered ASK inside the MULTI and the whole EXEC is aborted: nothing of it ran. After the move the
source answers MOVED, with the same effect. Both are retried here, until the move ends; a connection error is
not (the EXEC may have run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from services.common.redis_conn import SLOT_MOVE_FIRST_WAIT_S, SLOT_MOVE_LONGEST_WAIT_S, AnyRedis

# A slot move under flow takes a few seconds (the ClusterBatcher waits as long): keep trying a bit longer.
MOVE_TIMEOUT_S = 10.0
# Redirections inside a MULTI (EXECABORT: nothing ran); a cluster without a majority for a moment.
_NOT_RUN = (AskError, TryAgainError, ClusterDownError)

AnyPipeline = Pipeline | ClusterPipeline


def is_cluster(redis: AnyRedis) -> bool:
    """Whether `redis` is a Redis Cluster client (REDIS_MODE=cluster)."""
    return isinstance(redis, RedisCluster)


async def transaction(redis: AnyRedis, queue: Callable[[AnyPipeline], object],
                      timeout_s: float = MOVE_TIMEOUT_S) -> list[Any]:
    """EXEC the commands `queue` adds to a MULTI pipeline (keys of one slot: one instrument's) and their replies;
    on a cluster, again while the slot is moving (nothing ran), for at most `timeout_s`."""
    if not isinstance(redis, RedisCluster):
        async with redis.pipeline(transaction=True) as pipe:
            queue(pipe)
            return await pipe.execute()
    deadline = time.monotonic() + timeout_s
    wait = SLOT_MOVE_FIRST_WAIT_S
    while True:
        try:
            async with redis.pipeline(transaction=True) as cluster_pipe:
                queue(cluster_pipe)
                return await cluster_pipe.execute()
        except _NOT_RUN as exc:
            if time.monotonic() + wait > deadline:
                raise
            if isinstance(exc, MovedError):
                # The move has ended: learn who serves the slot now (the pipeline only refreshes every few).
                await redis.nodes_manager.initialize()
            await asyncio.sleep(wait)
            wait = min(wait * 2, SLOT_MOVE_LONGEST_WAIT_S)
