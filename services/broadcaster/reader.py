"""The process's one Redis reader: plain XREAD over every instrument's trades, events and book streams.

No consumer group: each broadcaster process reads the streams for itself (several can run side by
side), starting from the streams' ends at start and following the last id of each. On a Redis Cluster a read
names one slot only: one XREAD loop per instrument, its three streams sharing its hash tag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from redis.exceptions import RedisClusterException, RedisError

from services.broadcaster.entries import MalformedEntry, delta_message, order_message, trade_message
from services.broadcaster.hub import Hub
from services.broadcaster.metrics import BroadcasterMetrics
from services.broadcaster.protocol import encode
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.slots import is_cluster

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 2.0
Dispatch = Callable[[str, dict[Any, Any]], None]
Entries = list[tuple[bytes, dict[Any, Any]]]
StreamReply = list[tuple[bytes, Entries]] | None


class StreamReader:
    """Follows the streams and hands each entry to the hub, encoded once, only if someone listens."""

    def __init__(self, redis: AnyRedis, keys: dict[str, InstrumentKeys], hub: Hub, metrics: BroadcasterMetrics,
                 count: int, block_ms: int, linger_ms: int = 0) -> None:
        self.redis = redis
        self.hub = hub
        self.metrics = metrics
        self.count = count
        self.block_ms = block_ms
        self.linger_s = linger_ms / 1000
        self._routes: dict[bytes, tuple[str, Dispatch, Any]] = {}
        for symbol, k in keys.items():
            for stream, dispatch in ((k.trades, self._trade), (k.events, self._event), (k.book, self._delta)):
                self._routes[stream.encode()] = (symbol, dispatch, metrics.events_read.labels(stream))
        self.ids: dict[str, str] = {}
        # The streams of each XREAD: all of them on one server, an instrument's on a cluster.
        self._reads = ([[k.trades, k.events, k.book] for k in keys.values()] if is_cluster(redis)
                       else [[s for k in keys.values() for s in (k.trades, k.events, k.book)]])
        self._starting = asyncio.Lock()
        self._stopping = False
        self.last_read = 0.0  # monotonic time of the last XREAD that answered
        self.connected = False

    def is_ready(self) -> bool:
        return self.connected and time.monotonic() - self.last_read < 3 * self.block_ms / 1000 + 2

    async def start_ids(self) -> None:
        """Where each stream ends now: like `$`, but fixed per stream so no later read skips an entry."""
        streams = [s.decode() for s in self._routes]
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xrevrange(stream, count=1)
            replies = await pipe.execute()
        self.ids = {s: (r[0][0].decode() if r else "0-0") for s, r in zip(streams, replies, strict=True)}
        self.last_read = time.monotonic()
        self.connected = True

    def stop(self) -> None:
        """Make run() return; cancel its task too, to cut a read short."""
        # A flag, not only Task.cancel(): on Python 3.11 asyncio.wait_for (which redis-py uses for socket
        # timeouts) swallows a cancel that arrives as the inner await completes, and a loop would read on.
        self._stopping = True

    async def run(self) -> None:
        """Read until stopped or cancelled; survive Redis outages by retrying from the same ids."""
        if len(self._reads) == 1:
            await self._follow(self._reads[0])
            return
        loops = [asyncio.create_task(self._follow(streams)) for streams in self._reads]
        try:
            await asyncio.gather(*loops)
        finally:
            for loop in loops:
                loop.cancel()

    async def _follow(self, streams: list[str]) -> None:
        """Read `streams` (one slot's, or all on one server) until stopped or cancelled."""
        backoff = 0.05
        while not self._stopping:
            try:
                if not self.ids:
                    async with self._starting:  # one loop fixes every stream's start, once
                        if not self.ids:
                            await self.start_ids()
                ids = self.ids if len(self._reads) == 1 else {s: self.ids[s] for s in streams}
                reply = cast(StreamReply, await self.redis.xread(
                    ids, count=self.count, block=self.block_ms))  # type: ignore[arg-type]
            except (RedisError, RedisClusterException, OSError) as exc:  # a cluster's slot map in flux too
                self.metrics.read_errors.inc()
                if self.connected:
                    logger.error("stream read failed, retrying: %r", exc, extra={"event": "redis_lost"})
                    self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if not self.connected:
                logger.info("stream reads resumed", extra={"event": "redis_regained"})
                self.connected = True
            backoff = 0.05
            self.last_read = time.monotonic()
            filled = False
            for stream, entries in reply or ():
                self._dispatch(stream, entries)
                filled = filled or len(entries) >= self.count
            if reply and not filled and self.linger_s:
                await asyncio.sleep(self.linger_s)

    def _dispatch(self, stream: bytes, entries: Entries) -> None:
        symbol, dispatch, counter = self._routes[stream]
        for entry_id, fields in entries:
            try:
                dispatch(symbol, fields)
            except MalformedEntry as exc:
                logger.error("skipping malformed entry %s of %s: %s", entry_id.decode(), stream.decode(), exc)
        counter.inc(len(entries))
        self.ids[stream.decode()] = entries[-1][0].decode()

    def _trade(self, symbol: str, fields: dict[Any, Any]) -> None:
        if self.hub.wants_trades(symbol):
            message = trade_message(fields)
            self.hub.publish_trade(symbol, message.seq, encode(message))

    def _event(self, symbol: str, fields: dict[Any, Any]) -> None:
        client_id = fields.get(b"client_id", b"").decode()
        if self.hub.wants_orders(symbol, client_id):
            self.hub.publish_order(symbol, client_id, encode(order_message(fields)))

    def _delta(self, symbol: str, fields: dict[Any, Any]) -> None:
        if self.hub.wants_book(symbol):
            message = delta_message(fields)
            self.hub.publish_delta(symbol, message.seq, encode(message))
