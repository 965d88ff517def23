"""The one way services open Redis connections: one server (REDIS_MODE=single) or a Redis Cluster (cluster)."""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, TypeAlias, overload

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Above every BLOCK a setting may ask for (redis-py 8 defaults to 5 s, which breaks long XREADs).
REDIS_SOCKET_TIMEOUT_S = 10.0
# The longest BLOCK of a blocking read: its reply must be back before the socket times out.
MAX_BLOCK_MS = int(REDIS_SOCKET_TIMEOUT_S * 1000) - 1000

# While a cluster slot is being migrated, what met it (TRYAGAIN, or ASK inside a MULTI) did not run: try again
# after this, doubling up to the longest wait (ClusterBatcher, slots.transaction).
SLOT_MOVE_FIRST_WAIT_S = 0.010
SLOT_MOVE_LONGEST_WAIT_S = 0.200

RedisMode: TypeAlias = Literal["single", "cluster"]
REDIS_MODES: tuple[RedisMode, ...] = ("single", "cluster")
# Every service's client: both have the same commands; a cluster routes each by its first key's slot.
AnyRedis: TypeAlias = Redis | RedisCluster


@overload
def connect(url: str, *, mode: Literal["single"] = "single", socket_timeout: float = REDIS_SOCKET_TIMEOUT_S,
            max_connections: int = 64) -> Redis: ...
@overload
def connect(url: str, *, mode: Literal["cluster"], socket_timeout: float = REDIS_SOCKET_TIMEOUT_S,
            max_connections: int = 64) -> RedisCluster: ...
@overload
def connect(url: str, *, mode: RedisMode, socket_timeout: float = REDIS_SOCKET_TIMEOUT_S,
            max_connections: int = 64) -> AnyRedis: ...
def connect(url: str, *, mode: RedisMode = "single", socket_timeout: float = REDIS_SOCKET_TIMEOUT_S,
            max_connections: int = 64) -> AnyRedis:
    """A client of the server at `url`, or of the cluster `url` names a node of; it never resends after a
    connection error (a command may have run already, and resending an XADD or a script would do it twice)."""
    options: dict[str, Any] = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=3.0,
        health_check_interval=0,
        max_connections=max_connections,  # a cluster client: per node
        decode_responses=False,
        # No automatic retries (redis-py 8 retries 3 times by default). Callers decide.
        retry=Retry(NoBackoff(), 0),
    )
    if mode == "cluster":
        # reinitialize_steps=0: a MOVED patches the slot map; redis-py's default (a full reinitialisation every
        # 5th MOVED) closes every connection of the client, failing the commands other tasks have in flight.
        return _Cluster.from_url(url, reinitialize_steps=0, **options)
    if mode != "single":
        raise ValueError(f"unknown Redis mode {mode!r}: single or cluster")
    return Redis.from_url(url, **options)


class _Cluster(RedisCluster):
    """redis-py's cluster client, with retry=0 (no resend after a connection error, which the outer loop of
    RedisCluster.execute_command would do) and two repairs of its redirections (redis-py 8.1):

    - ASK: it sends ASKING and then the command as two pool checkouts on the named node. The pool hands out
      its oldest free connection, so with two or more free the command goes out on another connection than
      ASKING, meets MOVED back to the source, which asks again... until "TTL exhausted". Nodes reached by an
      ASK (`get_node`) hand out their newest free connection instead: the one ASKING was just answered on.
    - TRYAGAIN (a multi-key command, or a guarded script, on a slot being migrated) is retried 16 times, the
      last 8 after 50 ms, then "TTL exhausted" (0.4 s). A migration under flow takes longer: 100 tries, the
      last 50 after 50 ms, about 2.5 s, as the ClusterBatcher's few seconds.

    - First use by many tasks at once: a command that starts before the slot map is read is routed as if it had
      no key, meets MOVED, and the MOVED storm's reinitialisations close the connections of the others
      (ConnectionError, "'NoneType' object has no attribute 'writelines'"). The map is read first.

    MOVED, ASK and TRYAGAIN all mean the command did not run, so following them cannot apply it twice.
    """

    RedisClusterRequestTTL = 100

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is not None and not isinstance(node._free, _NewestFirst):
            node._free = _NewestFirst(node._free)
        return node


class _NewestFirst(deque[Any]):
    """A node's free connections, handed out newest first (ClusterNode.acquire_connection calls popleft)."""

    def popleft(self) -> Any:
        return self.pop()
