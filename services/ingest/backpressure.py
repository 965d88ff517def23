"""Backpressure: a background task watches each instrument's matcher lag and flags the overloaded ones."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.common.groups import group_lag
from services.common.keys import MATCHER_GROUP, InstrumentKeys
from services.common.redis_conn import AnyRedis

logger = logging.getLogger(__name__)


class LagMonitor:
    """Which instruments' matcher groups lag more than `max_lag` entries behind their orders stream."""

    def __init__(self, redis: AnyRedis, keys: dict[str, InstrumentKeys], max_lag: int,
                 interval_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._max_lag = max_lag
        self._interval_s = interval_s
        self._overloaded: frozenset[str] = frozenset()
        self._stopping = False
        self.lags: dict[str, int] = {}

    def overloaded(self, symbol: str) -> bool:
        return symbol in self._overloaded

    async def poll_once(self) -> None:
        """Read every instrument's lag once and update the overloaded set."""
        lags: dict[str, int] = {}
        for symbol, keys in self._keys.items():
            found = await group_lag(self._redis, keys.orders, MATCHER_GROUP)
            # No group yet: every entry on the stream is waiting for a matcher.
            lags[symbol] = found[0] if found is not None else int(await self._redis.xlen(keys.orders))
        self.lags = lags
        overloaded = frozenset(s for s, lag in lags.items() if lag > self._max_lag)
        if overloaded != self._overloaded:
            logger.warning("matcher lag over %d on %s (lags %s)", self._max_lag, sorted(overloaded) or "none",
                           lags)
        self._overloaded = overloaded

    def stop(self) -> None:
        """Make run() return; cancel its task too, to cut a poll short."""
        self._stopping = True

    async def run(self) -> None:
        """Poll until stop(); Redis errors keep the last known state."""
        # A flag, not only Task.cancel(): on Python 3.11 asyncio.wait_for (which redis-py uses for
        # socket timeouts) swallows a cancel that arrives as the inner await completes.
        while not self._stopping:
            try:
                await self.poll_once()
            except (RedisError, OSError) as exc:
                logger.warning("cannot read matcher lag: %r", exc)
            if not self._stopping:
                await asyncio.sleep(self._interval_s)
