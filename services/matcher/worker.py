"""The matcher process: one loop per instrument calling match.lua, plus a monitor for gauges."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.groups import group_lag
from services.common.keys import MATCHER_GROUP, instrument_keys
from services.matcher.engine import InstrumentMatcher
from services.matcher.heal import heal_if_behind
from services.matcher.metrics import MatcherMetrics
from services.matcher.recovery import recover_instrument
from services.matcher.settings import MatcherSettings

logger = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
MAX_BACKOFF_S = 2.0


class Matcher:
    """Every configured instrument's matching loop in one process."""

    def __init__(self, settings: MatcherSettings, redis: Redis, metrics: MatcherMetrics) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.engines = [
            InstrumentMatcher(redis, instrument, instrument_keys(settings.key_prefix, symbol),
                              settings.consumer, settings.batch_size)
            for symbol, instrument in settings.instruments.items()
        ]
        self._idle_wait_ms = min(settings.block_ms, settings.sweep_ms)
        self._heartbeat: dict[str, float] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask every loop to end after its current call (a backstop to cancelling the run task)."""
        self._stopping.set()

    def is_alive(self) -> bool:
        """Every instrument loop came round recently (an idle loop still wakes every block_ms)."""
        horizon = time.monotonic() - max(5.0, 3 * self.settings.block_ms / 1000)
        return all(self._heartbeat.get(e.instrument.symbol, 0.0) > horizon for e in self.engines)

    async def prepare(self) -> None:
        """Rebuild every instrument's book from PostgreSQL if Redis lost it, then ensure the groups."""
        async with asyncio.TaskGroup() as tasks:
            for engine in self.engines:
                tasks.create_task(self._prepare_engine(engine))

    async def _prepare_engine(self, engine: InstrumentMatcher) -> None:
        # Recovery comes first: match.lua cannot read before ensure_group re-creates the group, so no
        # command of a wiped Redis is matched against an empty book. A Redis that kept older state is
        # healed instead (match.lua refuses to run while a heal is under way).
        symbol = engine.instrument.symbol
        rebuilt = await recover_instrument(self.redis, engine.instrument, engine.keys, self.settings.database_url,
                                           backoff_max_s=self.settings.recovery_backoff_max_s)
        if rebuilt is None:
            healed = await heal_if_behind(self.redis, engine.instrument, engine.keys, self.settings.database_url,
                                          backoff_max_s=self.settings.recovery_backoff_max_s)
            if healed is not None:
                self.metrics.heals.labels(symbol).inc()
                for kind, count in healed.missing().items():
                    self.metrics.heal_missing.labels(symbol, kind).set(count)
        await engine.prepare()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for engine in self.engines:
                tasks.create_task(self._loop(engine))
            tasks.create_task(self._monitor())

    async def _loop(self, engine: InstrumentMatcher) -> None:
        symbol = engine.instrument.symbol
        backoff = 0.05
        down = False
        while not self._stopping.is_set():
            self._heartbeat[symbol] = time.monotonic()
            try:
                if down:
                    # Redis may have restarted empty: rebuild the book if so, and re-create the group.
                    await self._prepare_engine(engine)
                    logger.info("redis usable again: matching resumes",
                                extra={"event": "redis_regained", "instrument": symbol})
                    down = False
                    backoff = 0.05
                started = time.perf_counter()
                result = await engine.step()
                self.metrics.record(symbol, result, time.perf_counter() - started)
                if result.applied == 0:
                    # Woken by a command, or after the sweep period at the latest: deadlines are applied by
                    # match.lua calls, so an idle instrument must still be called.
                    await engine.wait_for_commands(result.last_id, self._idle_wait_ms)
                elif result.applied < self.settings.batch_size and self.settings.linger_ms > 0:
                    await asyncio.sleep(self.settings.linger_ms / 1000)
            except REDIS_DOWN as exc:
                if not down:
                    logger.error("redis connection lost",
                                 extra={"event": "redis_lost", "instrument": symbol, "error": repr(exc)})
                    down = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except ResponseError as exc:
                if str(exc).startswith("HEALING"):
                    # A heal of this instrument was cut short (it left meta marked): redo it first.
                    logger.error("instrument marked as being healed: healing again", extra={"instrument": symbol})
                    down = True
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                # The group vanished with Redis's state in a restart the client's retries hid.
                logger.error("matcher group missing: redis lost its state", extra={"instrument": symbol})
                down = True

    async def _monitor(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.monitor_interval_s)
            try:
                await self._sample()
            except REDIS_DOWN:
                continue

    async def _sample(self) -> None:
        for engine in self.engines:
            keys, symbol = engine.keys, engine.instrument.symbol
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in (keys.bid_orders, keys.ask_orders, keys.bid_levels, keys.ask_levels):
                    pipe.zcard(key)
                bids, asks, bid_levels, ask_levels = await pipe.execute()
            self.metrics.depth.labels(symbol, "buy").set(bids)
            self.metrics.depth.labels(symbol, "sell").set(asks)
            self.metrics.levels.labels(symbol, "buy").set(bid_levels)
            self.metrics.levels.labels(symbol, "sell").set(ask_levels)
            lag = await group_lag(self.redis, keys.orders, MATCHER_GROUP)
            if lag is not None:
                self.metrics.lag.labels(keys.orders, MATCHER_GROUP).set(lag[0])
                self.metrics.pending.labels(keys.orders, MATCHER_GROUP).set(lag[1])
