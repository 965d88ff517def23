"""What every connection shares, built once per app: settings, Redis, the hub, the reader, keys, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.broadcaster.hub import Hub
from services.broadcaster.metrics import BroadcasterMetrics
from services.broadcaster.reader import StreamReader
from services.broadcaster.settings import BroadcasterSettings

# The key store belongs to the ingest service; the broadcaster only reads it.
from services.common.auth import ADMIN, KeyTable, Principal, key_table_for
from services.common.keys import InstrumentKeys, keys_by_symbol
from services.common.redis_conn import connect
from services.common.urls import mask_url

logger = logging.getLogger(__name__)


class BroadcasterContext:
    """The broadcaster's shared state; start() and stop() run in the app's lifespan."""

    def __init__(self, settings: BroadcasterSettings) -> None:
        self.settings = settings
        self.instruments = settings.instruments
        self.keys: dict[str, InstrumentKeys] = keys_by_symbol(settings.key_prefix, settings.instruments)
        self.key_table: KeyTable | None = key_table_for(settings.auth_mode, settings.api_keys_file)
        self.redis: Redis = connect(settings.redis_url)
        self.metrics = BroadcasterMetrics()
        self.hub = Hub()
        self.reader = StreamReader(self.redis, self.keys, self.hub, self.metrics, settings.read_count,
                                   settings.read_block_ms, settings.read_linger_ms)
        self._reader_task: asyncio.Task[None] | None = None

    def authenticate(self, api_key: str) -> Principal | None:
        """The principal of an API key, None when unknown; everyone is admin under AUTH_MODE=off."""
        if self.key_table is None:
            return ADMIN
        return self.key_table.authenticate(f"Bearer {api_key}")

    def is_alive(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    async def start(self) -> None:
        if self.key_table is None:
            logger.warning("AUTH_MODE=off: API KEYS ARE NOT CHECKED, every connection may read every "
                           "client's orders. For local experiments only, never expose this service.")
        try:
            # Fixing the start ids before accepting anyone means no entry after start is missed.
            await self.reader.start_ids()
        except (RedisError, OSError) as exc:
            # Not fatal: the reader retries, and /readyz says so until Redis answers.
            logger.warning("Redis unreachable at start (%s): %r", mask_url(self.settings.redis_url), exc)
        self._reader_task = asyncio.create_task(self.reader.run(), name="broadcaster-reader")

    async def stop(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        await self.redis.aclose()
