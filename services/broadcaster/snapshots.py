"""Book snapshots for new subscribers: one shared, short-lived snapshot per instrument.

A snapshot walks the whole book inside Redis (one atomic script on Redis's one thread), so a client
looping subscribe/unsubscribe could keep Redis busy. Instead, the first subscriber's snapshot is kept
for `ttl_s`, with every delta published since it was requested: a later subscriber gets that snapshot
and those deltas, which add up to the book now. Concurrent requests share one read. Redis then walks
an instrument's book at most once per `ttl_s`, however many subscribe.
"""

from __future__ import annotations

import asyncio
import time

from services.broadcaster.catchup import read_snapshot
from services.broadcaster.hub import Hub
from services.broadcaster.metrics import BroadcasterMetrics
from services.broadcaster.protocol import encode
from services.common.instruments import Instruments
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis


class CachedSnapshot:
    """An encoded snapshot at `seq`, and the deltas (seq, payload) published since it was requested."""

    __slots__ = ("deltas", "payload", "seq", "taken")

    def __init__(self, payload: str, seq: int, deltas: list[tuple[int, str]], taken: float) -> None:
        self.payload = payload
        self.seq = seq
        self.deltas = deltas  # grows while cached: read it synchronously, right before registering a feed
        self.taken = taken


class SnapshotCache:
    """get() returns the instrument's shared snapshot, reading a new one only when it is older than ttl_s."""

    def __init__(self, redis: AnyRedis, instruments: Instruments, keys: dict[str, InstrumentKeys], hub: Hub,
                 metrics: BroadcasterMetrics, levels: int, ttl_s: float) -> None:
        self._redis = redis
        self._instruments = instruments
        self._keys = keys
        self._hub = hub
        self._metrics = metrics
        self._levels = levels
        self._ttl_s = ttl_s
        self._entries: dict[str, asyncio.Task[CachedSnapshot]] = {}

    async def get(self, instrument: str) -> CachedSnapshot:
        """A snapshot and the deltas after it; the caller must use both before its next await."""
        task = self._entries.get(instrument)
        if task is None or (task.done() and not self._fresh(task)):
            # A task of its own: a requester that leaves mid-read does not cancel the others' snapshot.
            task = asyncio.create_task(self._read(instrument), name="ws-snapshot")
            task.add_done_callback(_retrieve)
            self._entries[instrument] = task
        return await asyncio.shield(task)

    async def _read(self, instrument: str) -> CachedSnapshot:
        # Collect deltas before reading: none published during the read is missed (seq sorts out overlap).
        tail = self._hub.add_tail(instrument)
        try:
            self._metrics.snapshot_reads.inc()
            snapshot = await read_snapshot(self._redis, self._instruments[instrument], self._keys[instrument],
                                           self._levels)
        except BaseException:
            self._hub.remove_tail(instrument, tail)
            if self._entries.get(instrument) is asyncio.current_task():
                del self._entries[instrument]
            raise
        entry = CachedSnapshot(encode(snapshot), snapshot.seq, tail, time.monotonic())
        asyncio.get_running_loop().call_later(self._ttl_s, self._expire, instrument, entry)
        return entry

    def _fresh(self, task: asyncio.Task[CachedSnapshot]) -> bool:
        return (not task.cancelled() and task.exception() is None
                and time.monotonic() - task.result().taken < self._ttl_s)

    def _expire(self, instrument: str, entry: CachedSnapshot) -> None:
        # Its deltas stop growing now, so the entry must go with them.
        self._hub.remove_tail(instrument, entry.deltas)
        task = self._entries.get(instrument)
        if task is not None and task.done() and not task.cancelled() and task.exception() is None \
                and task.result() is entry:
            del self._entries[instrument]

    def close(self) -> None:
        """Cancel reads in flight and forget every snapshot (at shutdown)."""
        for task in self._entries.values():
            task.cancel()
        self._entries.clear()


def _retrieve(task: asyncio.Task[CachedSnapshot]) -> None:
    """Mark a failed read's exception as seen: the requesters that still wait get it themselves."""
    if not task.cancelled():
        task.exception()
