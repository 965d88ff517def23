"""The persister's side of the consumer group: reading, acknowledging, reclaiming, dead-lettering."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.typing import StreamIdT

from services.common.groups import ensure_group
from services.common.keys import PERSISTER_GROUP
from services.common.wire import fields_to_dict, text
from services.persister.records import Entry, StreamRef


def _fields(raw: dict[Any, Any] | None) -> dict[str, str] | None:
    # None: a pending entry whose data the stream no longer holds (trimmed past the group).
    return None if raw is None else fields_to_dict(raw)


class GroupStreams:
    """The persister group on every configured trades and events stream, as one consumer."""

    def __init__(self, redis: Redis, refs: list[StreamRef], consumer: str,
                 group: str = PERSISTER_GROUP) -> None:
        self.redis = redis
        self.refs = {ref.key: ref for ref in refs}
        self.consumer = consumer
        self.group = group

    async def ensure(self) -> None:
        """Create the group on every stream, from id 0 with MKSTREAM."""
        for key in self.refs:
            await ensure_group(self.redis, key, self.group)

    def _entries(self, reply: Any) -> tuple[list[Entry], list[tuple[StreamRef, str]]]:
        entries: list[Entry] = []
        trimmed: list[tuple[StreamRef, str]] = []
        for stream, items in reply or []:
            ref = self.refs[text(stream)]
            for entry_id, raw in items:
                fields = _fields(raw)
                if fields:
                    entries.append(Entry(ref, text(entry_id), fields))
                else:
                    trimmed.append((ref, text(entry_id)))
        return entries, trimmed

    async def read(self, cursors: dict[str, str], count: int, block_ms: int | None) -> tuple[
            list[Entry], list[tuple[StreamRef, str]]]:
        """XREADGROUP from `cursors` ('>' for new entries, an id for this consumer's own pending ones)."""
        reply = await self.redis.xreadgroup(self.group, self.consumer, cursors,  # type: ignore[arg-type]
                                            count=count, block=block_ms)
        return self._entries(reply)

    async def autoclaim(self, ref: StreamRef, min_idle_ms: int, start: str, count: int) -> tuple[
            str, list[Entry]]:
        """One XAUTOCLAIM page: (next cursor, entries now ours). Deleted ids leave the PEL by themselves."""
        reply = await self.redis.xautoclaim(ref.key, self.group, self.consumer, min_idle_ms,
                                            start_id=start, count=count)
        entries = [Entry(ref, text(i), f) for i, raw in reply[1] if raw and (f := _fields(raw))]
        return text(reply[0]), entries

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
        """Move `entry` to its instrument's dead-letter stream and ack it, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(entry.stream.deadletter, {
                "stream": entry.stream.key, "id": entry.id, "fields": json.dumps(entry.fields),
                "error": error, "deliveries": str(deliveries), "group": self.group,
                "consumer": self.consumer, "ts": str(int(time.time() * 1000)),
            })
            pipe.xack(entry.stream.key, self.group, entry.id)
            await pipe.execute()
