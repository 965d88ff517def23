"""Wiring: settings -> Redis, PostgreSQL, metrics server, the worker; signals stop it cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.common.db import make_engine
from services.common.instruments import Instruments
from services.common.keys import instrument_keys
from services.common.ops_http import OpsServer, ops_app
from services.common.redis_conn import connect
from services.persister.consumer import Persister
from services.persister.metrics import HealthState, PersisterMetrics
from services.persister.records import StreamRef
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
    try:
        streams = GroupStreams(redis, stream_refs(settings.key_prefix, instruments), settings.consumer)
        await Persister(settings, streams, Writer(engine, settings.write_mode), metrics, health).run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if server is not None:
            await server.stop()
        await engine.dispose()
        await redis.aclose()
