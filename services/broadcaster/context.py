"""What every connection shares, built once per app: settings, Redis, the hub, the reader, keys, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from services.broadcaster.client import Client
from services.broadcaster.hub import Hub
from services.broadcaster.metrics import BroadcasterMetrics
from services.broadcaster.reader import StreamReader
from services.broadcaster.settings import BroadcasterSettings
from services.broadcaster.snapshots import SnapshotCache
from services.broadcaster.stall import watch_stalls

# The key store belongs to the ingest service; the broadcaster only reads it.
from services.common.auth import ADMIN, KeyTable, Principal
from services.common.key_watch import KeyFile, open_key_file
from services.common.keys import InstrumentKeys, keys_by_symbol
from services.common.redis_conn import AnyRedis, connect
from services.common.urls import mask_url

logger = logging.getLogger(__name__)


class BroadcasterContext:
    """The broadcaster's shared state; start() and stop() run in the app's lifespan."""

    def __init__(self, settings: BroadcasterSettings) -> None:
        self.settings = settings
        self.instruments = settings.instruments
        self.keys: dict[str, InstrumentKeys] = keys_by_symbol(settings.key_prefix, settings.instruments)
        self.key_file: KeyFile | None = open_key_file(settings.auth_mode, settings.api_keys_file,
                                                      settings.allow_demo_keys)
        # The revoke callbacks of the sessions authenticated with each key id: a revoked key's are closed.
        self._by_key: dict[str, set[Callable[[], None]]] = {}
        if self.key_file is not None:
            self.key_file.on_revoke(self._revoked)
        # A connection per instrument beyond connect()'s 64 (per node): on a cluster each instrument's XREAD blocks
        # on one of its own, beside the snapshot and replay reads.
        self.redis: AnyRedis = connect(settings.redis_url, mode=settings.redis_mode,
                                       max_connections=64 + len(settings.instruments))
        self.metrics = BroadcasterMetrics()
        self.hub = Hub()
        self.reader = StreamReader(self.redis, self.keys, self.hub, self.metrics, settings.read_count,
                                   settings.read_block_ms, settings.read_linger_ms)
        self.snapshots = SnapshotCache(self.redis, settings.instruments, self.keys, self.hub, self.metrics,
                                       settings.snapshot_levels, settings.snapshot_cache_ms / 1000)
        self.connections = 0  # sessions admitted, accepted or about to be (the connection cap counts them)
        self.clients: set[Client] = set()  # clients with a running sender (stall.py watches them)
        self._reader_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._keys_task: asyncio.Task[None] | None = None

    @property
    def key_table(self) -> KeyTable | None:
        """The API keys in use now; None under AUTH_MODE=off."""
        return self.key_file.table if self.key_file is not None else None

    def admit(self) -> bool:
        """Count one more connection, or refuse it (False) when at BROADCASTER_MAX_CONNECTIONS."""
        if self.connections >= self.settings.max_connections:
            self.metrics.refused.inc()
            return False
        self.connections += 1
        return True

    def release(self) -> None:
        self.connections -= 1

    def authenticate(self, api_key: str) -> Principal | None:
        """The principal of an API key, None when unknown; everyone is admin under AUTH_MODE=off."""
        if self.key_table is None:
            return ADMIN
        return self.key_table.authenticate(f"Bearer {api_key}")

    def hold_key(self, key_id: str, revoke: Callable[[], None]) -> None:
        """Call revoke() if key `key_id` is revoked (or changed) while the session lasts."""
        if key_id:
            self._by_key.setdefault(key_id, set()).add(revoke)

    def release_key(self, key_id: str, revoke: Callable[[], None]) -> None:
        sessions = self._by_key.get(key_id)
        if sessions is not None:
            sessions.discard(revoke)
            if not sessions:
                del self._by_key[key_id]

    def _revoked(self, key_ids: frozenset[str]) -> None:
        for key_id in key_ids:
            for revoke in self._by_key.pop(key_id, set()):
                revoke()

    def is_alive(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    async def start(self) -> None:
        if self.key_file is None:
            logger.warning("AUTH_MODE=off: API KEYS ARE NOT CHECKED, every connection may read every "
                           "client's orders. For local experiments only, never expose this service.")
        else:
            self.key_file.announce()
            self._keys_task = asyncio.create_task(self.key_file.watch(), name="broadcaster-api-keys")
        try:
            # Fixing the start ids before accepting anyone means no entry after start is missed.
            await self.reader.start_ids()
        except (RedisError, OSError) as exc:
            # Not fatal: the reader retries, and /readyz says so until Redis answers.
            logger.warning("Redis unreachable at start (%s): %r", mask_url(self.settings.redis_url), exc)
        self._reader_task = asyncio.create_task(self.reader.run(), name="broadcaster-reader")
        self._watchdog_task = asyncio.create_task(watch_stalls(self.clients, self.settings.stall_s),
                                                  name="broadcaster-stall-watchdog")

    async def stop(self) -> None:
        self.snapshots.close()
        self.reader.stop()
        for task in (self._reader_task, self._watchdog_task, self._keys_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.redis.aclose()
