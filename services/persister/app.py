"""Wiring: settings -> Redis, PostgreSQL, metrics server, the worker, run until the service stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import make_engine
from services.common.instruments import Instruments, load_instruments
from services.common.keys import InstrumentKeys, keys_by_symbol
from services.common.ops_http import ops_server
from services.common.redis_conn import AnyRedis, connect
from services.common.snapshots import take_snapshot
from services.persister.consumer import Persister
from services.persister.metrics import HealthState, PersisterMetrics
from services.persister.periodic import every_instrument
from services.persister.records import stream_refs
from services.persister.retention import RetentionPolicy, retention_job
from services.persister.settings import PersisterSettings
from services.persister.streams import GroupStreams, raw_replies
from services.persister.writer import Writer

logger = logging.getLogger(__name__)


def snapshot_job(redis: AnyRedis, engine: AsyncEngine, instruments: Instruments
                 ) -> Callable[[str, InstrumentKeys], Awaitable[None]]:
    """Store one instrument's order book (run by periodic.every_instrument)."""

    async def job(symbol: str, keys: InstrumentKeys) -> None:
        taken = await take_snapshot(redis, engine, instruments[symbol], keys)
        logger.info("order book snapshot stored", extra={"event": "snapshot", "instrument": symbol,
                                                         "snapshot_id": taken.id, "book_seq": taken.seq})

    return job


async def serve(settings: PersisterSettings, stop: asyncio.Event) -> None:
    """Run one persister worker until `stop` is set (the batch in hand is written and acknowledged first)."""
    await run(settings, load_instruments(settings.instruments_file), stop)


async def run(settings: PersisterSettings, instruments: Instruments, stop: asyncio.Event) -> None:
    """Run one persister worker on these instruments until `stop` is set."""
    # A connection per instrument beyond connect()'s 64 (per node): on a cluster each instrument's loop blocks in
    # its group read on one of its own.
    connections = 64 + len(instruments)
    redis = connect(settings.redis_url, mode=settings.redis_mode, max_connections=connections)
    # A cluster client's reply callbacks are its nodes': the raw group reads need a client of their own.
    twin = (connect(settings.redis_url, mode=settings.redis_mode, max_connections=connections)
            if settings.redis_mode == "cluster" else None)
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    metrics = PersisterMetrics()
    health = HealthState()
    server = None
    if settings.metrics_port:
        server = ops_server(metrics.registry, lambda: health.running, settings.metrics_host, settings.metrics_port)
        await server.start()
    keys = keys_by_symbol(settings.key_prefix, instruments)
    snapshots = None
    if settings.snapshot_interval_s > 0:
        snapshots = asyncio.create_task(every_instrument(
            "snapshot", redis, keys, lambda k: k.snapshot_lock, snapshot_job(redis, engine, instruments),
            settings.snapshot_interval_s, settings.consumer, stop))
    retention = None
    if settings.retention_interval_s > 0:
        policy = RetentionPolicy(settings.stream_retention_s, settings.order_retention_s)
        retention = asyncio.create_task(every_instrument(
            "retention", redis, keys, lambda k: k.retention_lock, retention_job(redis, engine, policy, metrics),
            settings.retention_interval_s, settings.consumer, stop))
    try:
        # Each loop sets `stop` as it ends: one failing stops the others after their batch in hand.
        ended = await asyncio.gather(*(Persister(settings, streams, Writer(engine), metrics, health).run(stop)
                                       for streams in group_streams(settings, instruments, redis, twin)),
                                     return_exceptions=True)
        for outcome in ended:
            if isinstance(outcome, BaseException):
                raise outcome
    finally:
        for task in (snapshots, retention):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if server is not None:
            await server.stop()
        await engine.dispose()
        await redis.aclose()
        if twin is not None:
            await twin.aclose()


def group_streams(settings: PersisterSettings, instruments: Instruments, redis: AnyRedis,
                  twin: AnyRedis | None) -> list[GroupStreams]:
    """What each persister loop reads: every stream in one XREADGROUP on one server; on a cluster, where a read
    may name one slot only, one loop per instrument (its trades and events streams share its slot)."""
    refs = stream_refs(settings.key_prefix, instruments)
    if twin is None:
        return [GroupStreams(redis, refs, settings.consumer)]
    raw = raw_replies(redis, twin)
    return [GroupStreams(redis, [r for r in refs if r.instrument.symbol == symbol], settings.consumer, raw=raw)
            for symbol in instruments]
