"""Everything the request handlers share, built once per app: Redis, the batcher, keys, auth, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.requests import Request

from services.common.activity import ActivityLog
from services.common.auth import ADMIN, KeyTable, Principal
from services.common.db import make_engine
from services.common.key_watch import KeyFile, open_key_file
from services.common.keys import InstrumentKeys, keys_by_symbol
from services.common.lua import LuaScript
from services.common.redis_cluster_batch import make_batcher
from services.common.redis_conn import AnyRedis, connect
from services.common.scripts import ACCEPT_SCRIPT, AMEND_SCRIPT, BOOK_SCRIPT, CANCEL_SCRIPT
from services.common.urls import mask_url
from services.ingest.backpressure import LagMonitor
from services.ingest.errors import unauthorized
from services.ingest.metrics import IngestMetrics
from services.ingest.orders_store import OrderStore
from services.ingest.pg_reads import PublicReads
from services.ingest.settings import IngestSettings
from services.ingest.trade_session import CodSessions

logger = logging.getLogger(__name__)

SCRIPTS: tuple[LuaScript, ...] = (ACCEPT_SCRIPT, CANCEL_SCRIPT, AMEND_SCRIPT, BOOK_SCRIPT)


class IngestContext:
    """The ingest service's shared state; start() and stop() run in the app's lifespan."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.instruments = settings.instruments
        self.keys: dict[str, InstrumentKeys] = keys_by_symbol(settings.key_prefix, settings.instruments)
        # Re-read while running (key_watch.py): a request meets the table of the moment it arrives.
        self.key_file: KeyFile | None = open_key_file(settings.auth_mode, settings.api_keys_file,
                                                      settings.allow_demo_keys)
        # connect() never resends a command after a connection error (accept.lua without an idempotency
        # key would place the order twice): the client gets a 503 instead.
        self.redis: AnyRedis = connect(settings.redis_url, mode=settings.redis_mode)
        # One pipeline per tick, to the server or to each master of a cluster (docs/scale-out.md).
        self.batcher = make_batcher(self.redis, settings.redis_mode)
        # Connects lazily: ingest starts, places and cancels orders while PostgreSQL is down.
        # Order reads (GET /orders/{id} of orders Redis no longer holds) and admin work (snapshots, settlement):
        # no statement timeout, as a settlement may rightly run long.
        self.db: AsyncEngine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        # Public reads on a pool of their own, each bounded by READ_TIMEOUT_MS (pg_reads.PublicReads).
        self.public_reads = PublicReads(settings.database_url, settings.read_timeout_ms,
                                        settings.read_db_pool_size)
        self.store = OrderStore(self.batcher, self.instruments, self.keys)
        self.lag = LagMonitor(self.redis, self.keys, settings.max_matcher_lag, settings.lag_poll_interval_s)
        self.metrics = IngestMetrics()
        self.activity = ActivityLog("ingest", settings.log_activity_s)
        # Cancel-on-disconnect sessions of the order-entry sockets (trade_socket.py), their deadlines refreshed.
        self.trade_sessions = CodSessions(self.batcher, self.keys)
        # RateLimit-Limit of every order answer, once (None: the client bucket is off, no RateLimit-* headers).
        self.rate_limit_limit: str | None = (
            str(settings.rate_limit_burst) if settings.rate_limit_per_sec > 0 else None)
        self._lag_task: asyncio.Task[None] | None = None
        self._keys_task: asyncio.Task[None] | None = None
        self._sessions_stopped = asyncio.Event()
        self._sessions_task: asyncio.Task[None] | None = None

    @property
    def key_table(self) -> KeyTable | None:
        """The API keys in use now; None under AUTH_MODE=off."""
        return self.key_file.table if self.key_file is not None else None

    def authenticate(self, request: Request | Headers) -> Principal:
        """The request's principal; ApiError 401 for a missing or unknown key."""
        if self.key_table is None:
            return ADMIN
        headers = request if isinstance(request, Headers) else request.headers
        principal = self.key_table.authenticate(headers.get("authorization"))
        if principal is None:
            raise unauthorized()
        return principal

    async def start(self) -> None:
        if self.key_file is None:
            logger.warning(
                "AUTH_MODE=off: API KEYS ARE NOT CHECKED, every request acts as admin. "
                "For local experiments only, never expose this service.")
        else:
            self.key_file.announce()
            self._keys_task = asyncio.create_task(self.key_file.watch(), name="ingest-api-keys")
        try:
            await self.load_scripts()
        except (RedisError, OSError) as exc:
            # Not fatal: /readyz reports it and the batcher loads scripts on NOSCRIPT.
            logger.warning("cannot load Lua scripts at start (Redis %s): %r", mask_url(self.settings.redis_url), exc)
        self._lag_task = asyncio.create_task(self.lag.run(), name="ingest-lag-monitor")
        self._sessions_task = asyncio.create_task(self.trade_sessions.run(self._sessions_stopped),
                                                  name="ingest-cod-sessions")

    async def stop(self) -> None:
        if self._sessions_task is not None:
            self._sessions_stopped.set()
            await self._sessions_task
        if self._lag_task is not None:
            self.lag.stop()
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self._keys_task is not None:
            self._keys_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keys_task
        await self.batcher.close()
        await self.redis.aclose()
        await self.db.dispose()
        await self.public_reads.close()

    async def load_scripts(self) -> None:
        for script in SCRIPTS:
            await script.load(self.redis)
