"""Wiring: settings -> Redis, PostgreSQL, metrics server, the worker; signals stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import make_engine
from services.common.instruments import Instruments
from services.common.keys import instrument_keys
from services.common.ops_http import OpsServer, ops_app
from services.common.redis_conn import connect
from services.common.snapshots import take_snapshot
from services.persister.consumer import Persister
from services.persister.metrics import HealthState, PersisterMetrics
from services.persister.records import StreamRef
from services.persister.retention import RetentionPolicy, retention_loop
from services.persister.settings import PersisterSettings
from services.persister.streams import GroupStreams
from services.persister.writer import Writer

logger = logging.getLogger(__name__)


def deadletter_key(prefix: str, symbol: str) -> str:
    """The dead-letter stream of an instrument (same hash tag: dead-lettering is one MULTI)."""
    return f"{prefix}deadletter:{{{symbol}}}"


def stream_refs(prefix: str, instruments: Instruments) -> list[StreamRef]:
    """The trades and events streams of every configured instrument."""
    refs: list[StreamRef] = []
    for symbol, instrument in instruments.items():
        keys = instrument_keys(prefix, symbol)
        dead = deadletter_key(prefix, symbol)
        refs.append(StreamRef(keys.trades, "trades", instrument, dead))
        refs.append(StreamRef(keys.events, "events", instrument, dead))
    return refs


async def snapshot_loop(redis: Redis, engine: AsyncEngine, prefix: str, instruments: Instruments,
                        interval_s: float, consumer: str, stop: asyncio.Event) -> None:
    """Store every instrument's order book every interval_s until `stop`; failures wait for the next turn.

    Every worker runs this loop, whichever workers scaling leaves; a lock per instrument and interval
    lets one of them take each snapshot.
    """
    lock_ms = max(1, int(interval_s * 800))
    failing = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        try:
            for symbol, instrument in instruments.items():
                keys = instrument_keys(prefix, symbol)
                if not await redis.set(keys.snapshot_lock, consumer, nx=True, px=lock_ms):
                    continue
                taken = await take_snapshot(redis, engine, instrument, keys)
                logger.info("order book snapshot stored", extra={"event": "snapshot", "instrument": symbol,
                                                                 "snapshot_id": taken.id, "book_seq": taken.seq})
            failing = False
        except (RedisError, SQLAlchemyError, OSError) as exc:
            if not failing:
                logger.warning("order book snapshot failed: %r", exc, extra={"event": "snapshot_failed"})
            failing = True


async def run(settings: PersisterSettings, instruments: Instruments,
              stop: asyncio.Event | None = None) -> None:
    """Run one persister worker until SIGTERM/SIGINT, or until `stop` is set when the caller gives one."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    redis = connect(settings.redis_url)
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    metrics = PersisterMetrics()
    health = HealthState()
    server = None
    if settings.metrics_port:
        server = OpsServer(ops_app(metrics.registry, lambda: health.running), settings.metrics_host,
                           settings.metrics_port)
        await server.start()
    snapshots = None
    if settings.snapshot_interval_s > 0:
        snapshots = asyncio.create_task(snapshot_loop(redis, engine, settings.key_prefix, instruments,
                                                      settings.snapshot_interval_s, settings.consumer, stop))
    retention = None
    if settings.retention_interval_s > 0:
        policy = RetentionPolicy(settings.stream_retention_s, settings.order_retention_s)
        retention = asyncio.create_task(retention_loop(
            redis, engine, settings.key_prefix, list(instruments), policy, settings.retention_interval_s,
            settings.consumer, metrics, stop))
    try:
        streams = GroupStreams(redis, stream_refs(settings.key_prefix, instruments), settings.consumer)
        await Persister(settings, streams, Writer(engine, settings.write_mode), metrics, health).run(stop)
    finally:
        for task in (snapshots, retention):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for sig in signals:
            loop.remove_signal_handler(sig)
        if server is not None:
            await server.stop()
        await engine.dispose()
        await redis.aclose()
