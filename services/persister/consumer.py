"""The persister loop: drain own pending -> read new -> reclaim idle -> write -> ack, dead-letter poison."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisClusterException, RedisError

from services.common.activity import ActivityLog
from services.common.groups import group_lag
from services.persister.metrics import HealthState, PersisterMetrics
from services.persister.records import Decoded, Entry, MalformedEntry, StreamRef, WriteSet, decode
from services.persister.settings import PersisterSettings
from services.persister.streams import GroupStreams
from services.persister.writer import DatabaseUnavailable, EntryRejected, Writer

logger = logging.getLogger(__name__)


# Order events worth a line of their own (ingest logs accepted and refused orders, this the matcher's verdicts).
LOGGED_EVENTS = frozenset({"cancelled", "rejected", "cancel_rejected", "amended", "amend_rejected"})


def _count_outcomes(written: list[Decoded], activity: ActivityLog) -> None:
    """Trades and events persisted, and the matcher's verdicts among them, for the `activity` line."""
    trades = events = 0
    for d in written:
        if d.trade is not None:
            trades += 1
        elif d.event is not None:
            events += 1
            if d.event.event in LOGGED_EVENTS:
                activity.count(d.event.event)
    if trades:
        activity.count("trades", trades)
    if events:
        activity.count("events", events)


def _log_outcomes(written: list[Decoded]) -> None:
    """One line per persisted trade and per cancel or matcher rejection (a redelivered entry logs again)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    for d in written:
        if d.trade is not None:
            t = d.trade
            logger.info("trade %s", t.trade_id, extra={
                "event": "trade", "trade_id": t.trade_id, "instrument": t.instrument, "seq": t.seq,
                "price": str(t.price), "quantity": str(t.quantity), "taker_side": t.taker_side,
                "buy_order_id": t.buy_order_id, "sell_order_id": t.sell_order_id})
        elif d.event is not None and d.event.event in LOGGED_EVENTS:
            e = d.event
            extra = {
                "event": e.event, "order_id": e.order_id, "client_id": e.client_id,
                "instrument": e.instrument, "status": e.status, "reason": e.reason,
                "filled_quantity": str(e.filled_quantity), "seq": e.seq}
            if e.event == "amended" and d.order is not None:
                # What the amend changed: the new price and total, and whether the order lost its place.
                extra.update(price=str(d.order.price), quantity=str(d.order.quantity),
                             requeued=d.order.queued_seq == e.seq)
            logger.info("order %s", e.event, extra=extra)


class ShuttingDown(Exception):
    """Asked to stop while the database is down: the batch in hand stays pending for the next start."""


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Persister:
    """One worker of the `persister` group."""

    def __init__(self, settings: PersisterSettings, streams: GroupStreams, writer: Writer,
                 metrics: PersisterMetrics, health: HealthState) -> None:
        self.settings = settings
        self.streams = streams
        self.writer = writer
        self.metrics = metrics
        self.health = health
        self._per_stream = max(1, settings.batch // max(1, len(streams.refs)))
        self.activity = ActivityLog("persister", settings.log_activity_s)

    # Loop ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish the batch in hand and return."""
        await self.streams.ensure()
        self.health.running = True
        logger.info("persister started", extra={
            "event": "start", "consumer": self.streams.consumer, "streams": sorted(self.streams.refs)})
        lag_task = asyncio.create_task(self._report_lag(stop))
        activity_task = asyncio.create_task(self.activity.run(stop))
        try:
            await self._loop(stop)
        except ShuttingDown:
            logger.warning("stopping with the database down: the batch in hand stays pending",
                           extra={"event": "stop_pending"})
        finally:
            stop.set()
            await lag_task
            await activity_task
            self.activity.close()
            self.health.running = False
            logger.info("persister stopped", extra={"event": "stop",
                                                               "consumer": self.streams.consumer})

    async def _loop(self, stop: asyncio.Event) -> None:
        pending_drained = False
        next_claim = 0.0
        redis_delay = self.settings.backoff_initial_s
        redis_down = False
        while not stop.is_set():
            try:
                if not pending_drained:
                    await self.drain_own_pending(stop)
                    pending_drained = True
                if time.monotonic() >= next_claim:
                    await self.reclaim(stop)
                    next_claim = time.monotonic() + self.settings.claim_every_ms / 1000
                if stop.is_set():
                    break
                cursors = dict.fromkeys(self.streams.refs, ">")
                entries, trimmed = await self.streams.read(cursors, self._per_stream, self.settings.block_ms)
                await self._drop_trimmed(trimmed)
                if entries:
                    await self.process(entries, stop)
                if 0 < len(entries) < self._per_stream and self.settings.linger_ms:
                    await _sleep_unless(stop, self.settings.linger_ms / 1000)
                redis_delay = self.settings.backoff_initial_s
                if redis_down:
                    redis_down = False
                    logger.info("redis regained", extra={"event": "redis_regained"})
            except (RedisError, RedisClusterException) as exc:  # the latter: a cluster's slot map in flux
                # An XREADGROUP that ran just before the connection died delivered entries whose reply was
                # lost: they are pending for this consumer, and '>' never returns them. Read own pending
                # again first, rather than leave them to XAUTOCLAIM after claim_idle_ms.
                pending_drained = False
                if "NOGROUP" in str(exc):
                    # Redis restarted without its data: the streams begin again, so does the group.
                    logger.warning("consumer group missing; creating it again", extra={"event": "regroup"})
                    with contextlib.suppress(RedisError):
                        await self.streams.ensure()
                    continue
                logger.error("redis error %r; retrying in %.1fs", exc, redis_delay,
                             extra={"event": "redis_error" if redis_down else "redis_lost"})
                redis_down = True
                await _sleep_unless(stop, redis_delay)
                redis_delay = min(redis_delay * 2, self.settings.backoff_max_s)

    async def drain_own_pending(self, stop: asyncio.Event) -> None:
        """Process entries delivered to this consumer name before (a previous run that died)."""
        cursors = dict.fromkeys(self.streams.refs, "0")
        while cursors and not stop.is_set():
            entries, trimmed = await self.streams.read(cursors, self._per_stream, None)
            await self._drop_trimmed(trimmed)
            seen = {ref.key: entry_id for ref, entry_id in trimmed}
            for entry in entries:
                seen[entry.stream.key] = entry.id
            # A stream with nothing more pending is done; the others continue after their last id.
            cursors = {key: seen[key] for key in cursors if key in seen}
            if entries:
                logger.info("recovering %d pending entries", len(entries),
                            extra={"event": "pending", "count": len(entries)})
                await self.process(entries, stop)

    async def reclaim(self, stop: asyncio.Event) -> None:
        """Take over entries idle longer than PERSISTER_CLAIM_IDLE_MS (dead workers, failed entries)."""
        for ref in list(self.streams.refs.values()):
            cursor = "0-0"
            while not stop.is_set():
                cursor, entries = await self.streams.autoclaim(ref, self.settings.claim_idle_ms, cursor,
                                                               self._per_stream)
                if entries:
                    self.metrics.reclaimed.inc(len(entries))
                    logger.info("reclaimed %d idle entries of %s", len(entries), ref.key, extra={
                        "event": "reclaimed", "stream": ref.key, "count": len(entries),
                        "first_id": entries[0].id, "last_id": entries[-1].id})
                    await self.process(entries, stop)
                if cursor == "0-0":
                    break

    async def _drop_trimmed(self, trimmed: list[tuple[StreamRef, str]]) -> None:
        if trimmed:
            logger.error("%d pending entries were trimmed before being persisted: %r", len(trimmed),
                         [(ref.key, i) for ref, i in trimmed], extra={"event": "trimmed"})
            await self.streams.ack(trimmed)

    # One batch ----------------------------------------------------------------------------------

    async def process(self, entries: list[Entry], stop: asyncio.Event) -> None:
        """Decode, write in one transaction, ack; isolate and dead-letter what cannot be written."""
        started = time.perf_counter()
        decoded: list[Decoded] = []
        failed: list[tuple[Entry, str]] = []
        for entry in entries:
            try:
                decoded.append(decode(entry))
            except MalformedEntry as exc:
                failed.append((entry, f"malformed: {exc}"))
        written: list[Decoded] = []
        if decoded:
            try:
                await self._write(decoded, stop)
                written = decoded
            except EntryRejected:
                # Some row is refused: write one entry per transaction so its batch-mates still land.
                for one in decoded:
                    try:
                        await self._write([one], stop)
                        written.append(one)
                    except EntryRejected as exc:
                        failed.append((one.entry, str(exc)))
        await self.streams.ack((d.entry.stream, d.entry.id) for d in written)
        _count_outcomes(written, self.activity)
        if self.settings.log_orders:
            _log_outcomes(written)
        for entry, error in failed:
            await self._failed(entry, error)
        self.metrics.batch_size.observe(len(entries))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _write(self, decoded: list[Decoded], stop: asyncio.Event) -> None:
        """Write until it commits: retry a database outage with capped exponential backoff."""
        rows = WriteSet.of(decoded)
        delay = self.settings.backoff_initial_s
        while True:
            try:
                written = await self.writer.write(rows)
            except DatabaseUnavailable as exc:
                self._database_state(False, str(exc))
                if stop.is_set():
                    raise ShuttingDown from exc
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, self.settings.backoff_max_s)
                with contextlib.suppress(RedisError):
                    await self.streams.keep(d.entry for d in decoded)
                continue
            self._database_state(True, "")
            self.metrics.rows_written.labels("trades").inc(written.trades)
            self.metrics.rows_written.labels("order_events").inc(written.events)
            self.metrics.rows_written.labels("orders").inc(written.orders)
            return

    def _database_state(self, up: bool, error: str) -> None:
        if up == self.health.database_up:
            return
        self.health.database_up = up
        self.metrics.db_up.set(1 if up else 0)
        if up:
            logger.info("database regained", extra={"event": "db_regained"})
        else:
            logger.error("database lost: %s", error, extra={"event": "db_lost", "error": error})

    async def _failed(self, entry: Entry, error: str) -> None:
        deliveries = await self.streams.deliveries(entry)
        ids = {"stream": entry.stream.key, "id": entry.id, "deliveries": deliveries, "error": error}
        if deliveries >= self.settings.max_deliveries:
            await self.streams.dead_letter(entry, error, deliveries)
            self.metrics.dead_letters.inc()
            logger.error("dead-lettered %s %s to %s after %d deliveries: %s", entry.stream.key, entry.id,
                         entry.stream.deadletter, deliveries, error,
                         extra={"event": "dead_lettered", **ids})
        else:
            # Left pending: XAUTOCLAIM delivers it again once idle (counting the delivery).
            logger.warning("entry %s %s failed (delivery %d of %d): %s", entry.stream.key, entry.id,
                           deliveries, self.settings.max_deliveries, error,
                           extra={"event": "entry_failed", **ids})

    async def _report_lag(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for key in self.streams.refs:
                try:
                    lag = await group_lag(self.streams.redis, key, self.streams.group)
                except RedisError:
                    continue
                if lag is not None:
                    self.metrics.group_lag.labels(key, self.streams.group).set(lag[0])
                    self.metrics.group_pending.labels(key, self.streams.group).set(lag[1])
            await _sleep_unless(stop, self.settings.lag_every_s)
