"""The persister's side of the consumer group: reading, acknowledging, reclaiming, dead-lettering."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.typing import StreamIdT

from services.common.groups import ensure_group
from services.common.keys import PERSISTER_GROUP
from services.common.redis_conn import AnyRedis
from services.common.slots import AnyPipeline, transaction
from services.persister.records import Entry, StreamRef

# The replies of the group reads, as Redis sent them: redis-py's callbacks would build a dict per entry
# (pairs_to_dict) that _fields then rebuilds as text, 5-10% of the persister's CPU (issue 14's profile).
RAW_REPLIES = ("XREADGROUP", "XAUTOCLAIM")


def _as_sent(response: Any, **options: Any) -> Any:
    return response


def _fields(raw: list[bytes] | None) -> dict[str, str] | None:
    """An entry's flat [field, value, ...] list as a dict of text, in one pass."""
    # None: a pending entry whose data the stream no longer holds (trimmed past the group).
    if raw is None:
        return None
    values = map(bytes.decode, raw)
    return dict(zip(values, values, strict=False))


def raw_replies(redis: AnyRedis, cluster_twin: AnyRedis | None = None) -> AnyRedis:
    """A client whose XREADGROUP and XAUTOCLAIM replies come as Redis sent them (GroupStreams reads with it):
    on one server it shares `redis`'s pool; a cluster client's callbacks are shared by all its nodes, so there it is
    `cluster_twin`, a client of its own (connect() again) given to this use."""
    raw: AnyRedis
    if isinstance(redis, Redis):
        # Same pool and connections, its own response callbacks.
        raw = Redis(connection_pool=redis.connection_pool)
    elif cluster_twin is None or cluster_twin is redis:
        raise ValueError("a cluster client needs a twin of its own for raw replies")
    else:
        raw = cluster_twin
    for command in RAW_REPLIES:
        raw.set_response_callback(command, _as_sent)
    return raw


class GroupStreams:
    """The persister group on the trades and events streams of `refs`, as one consumer (on a cluster, the refs of
    one instrument: a group read is one slot's)."""

    def __init__(self, redis: AnyRedis, refs: list[StreamRef], consumer: str,
                 group: str = PERSISTER_GROUP, raw: AnyRedis | None = None) -> None:
        self.redis = redis
        self.refs = {ref.key: ref for ref in refs}
        self.consumer = consumer
        self.group = group
        # `raw`: raw_replies' client, shared by the GroupStreams of one process.
        self._raw = raw if raw is not None else raw_replies(redis)

    async def ensure(self) -> None:
        """Create the group on every stream, from id 0 with MKSTREAM."""
        for key in self.refs:
            await ensure_group(self.redis, key, self.group)

    def _entries(self, reply: Any) -> tuple[list[Entry], list[tuple[StreamRef, str]]]:
        entries: list[Entry] = []
        trimmed: list[tuple[StreamRef, str]] = []
        # RESP2 replies [[stream, entries], ...], RESP3 ones {stream: entries}.
        for stream, items in (reply.items() if isinstance(reply, dict) else reply or []):
            ref = self.refs[stream.decode()]
            for entry_id, raw in items:
                fields = _fields(raw)
                if fields:
                    entries.append(Entry(ref, entry_id.decode(), fields))
                else:
                    trimmed.append((ref, entry_id.decode()))
        return entries, trimmed

    async def read(self, cursors: dict[str, str], count: int, block_ms: int | None) -> tuple[
            list[Entry], list[tuple[StreamRef, str]]]:
        """XREADGROUP from `cursors` ('>' for new entries, an id for this consumer's own pending ones)."""
        args: list[str | int] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", *cursors, *cursors.values()]
        reply = await self._raw.execute_command(*args, **{NEVER_DECODE: True})
        return self._entries(reply)

    async def autoclaim(self, ref: StreamRef, min_idle_ms: int, start: str, count: int) -> tuple[
            str, list[Entry]]:
        """One XAUTOCLAIM page: (next cursor, entries now ours). Deleted ids leave the PEL by themselves."""
        reply = await self._raw.execute_command("XAUTOCLAIM", ref.key, self.group, self.consumer, min_idle_ms,
                                                start, "COUNT", count,
                                                **{NEVER_DECODE: True})
        entries = [Entry(ref, i.decode(), f) for i, raw in reply[1] if raw and (f := _fields(raw))]
        return reply[0].decode(), entries

    async def ack(self, pairs: Iterable[tuple[StreamRef, str]]) -> None:
        by_stream: dict[str, list[str]] = defaultdict(list)
        for ref, entry_id in pairs:
            by_stream[ref.key].append(entry_id)
        if not by_stream:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, ids in by_stream.items():
                pipe.xack(key, self.group, *ids)
            await pipe.execute()

    async def keep(self, entries: Iterable[Entry]) -> None:
        """Reset the idle time of entries we are still working on, so no other worker reclaims them."""
        by_stream: dict[str, list[StreamIdT]] = defaultdict(list)
        for entry in entries:
            by_stream[entry.stream.key].append(entry.id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, ids in by_stream.items():
                pipe.xclaim(key, self.group, self.consumer, 0, ids, justid=True)
            await pipe.execute()

    async def deliveries(self, entry: Entry) -> int:
        """How many times the group has delivered `entry` (0 when it is no longer pending)."""
        rows = await self.redis.xpending_range(entry.stream.key, self.group, min=entry.id, max=entry.id,
                                               count=1)
        return int(rows[0]["times_delivered"]) if rows else 0

    async def dead_letter(self, entry: Entry, error: str, deliveries: int) -> None:
        """Move `entry` to its instrument's dead-letter stream and ack it, atomically (one MULTI: both keys carry
        the instrument's hash tag)."""
        fields = {
            "stream": entry.stream.key, "id": entry.id, "fields": json.dumps(entry.fields),
            "error": error, "deliveries": str(deliveries), "group": self.group,
            "consumer": self.consumer, "ts": str(int(time.time() * 1000)),
        }

        def queue(pipe: AnyPipeline) -> None:
            pipe.xadd(entry.stream.deadletter, fields)  # type: ignore[arg-type]
            pipe.xack(entry.stream.key, self.group, entry.id)

        await transaction(self.redis, queue)
