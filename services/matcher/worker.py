"""The matcher process: a loop per instrument whose lease it holds calling match.lua, the lease manager that takes,
renews and hands over those leases (lease.py), and a monitor for gauges."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.groups import group_lag
from services.common.keys import MATCHER_GROUP, instrument_keys
from services.common.redis_conn import AnyRedis
from services.matcher.engine import InstrumentMatcher
from services.matcher.heal import heal_if_behind
from services.matcher.lease import Decisions, LeaseKeeper, poll_interval_ms
from services.matcher.metrics import MatcherMetrics
from services.matcher.recovery import recover_instrument
from services.matcher.settings import MatcherSettings

logger = logging.getLogger(__name__)

# RedisClusterException: a cluster client that could not reach a slot's node or gave up following redirections.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, RedisClusterException)
MAX_BACKOFF_S = 2.0


class Matcher:
    """The matching loops of the configured instruments whose leases this process holds."""

    def __init__(self, settings: MatcherSettings, redis: AnyRedis, metrics: MatcherMetrics) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.engines = [
            InstrumentMatcher(redis, instrument, instrument_keys(settings.key_prefix, symbol),
                              settings.consumer, settings.batch_size)
            for symbol, instrument in settings.instruments.items()
        ]
        self._engines = {engine.instrument.symbol: engine for engine in self.engines}
        self.leases = LeaseKeeper(redis, settings.key_prefix, settings.consumer, settings.lease_ms,
                                  {s: e.keys.matcher_lease for s, e in self._engines.items()})
        self._poll_s = poll_interval_ms(settings.lease_ms) / 1000
        self._idle_wait_ms = min(settings.block_ms, settings.sweep_ms)
        self._heartbeat: dict[str, float] = {}
        # The loop of each instrument whose loop should go on: a loop ends once it is no longer its symbol's.
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._handing_over: set[str] = set()  # held instruments whose loop is stopping before their release
        self._group: asyncio.TaskGroup | None = None  # run()'s, while it runs
        self._prepared: set[str] = set()  # held instruments prepared since their lease was taken
        self._looked = False  # the lease manager has looked once: a matcher holding nothing is then a standby
        self._stopping = asyncio.Event()
        for symbol in self._engines:
            metrics.leases.labels(symbol).set(0)

    def stop(self) -> None:
        """Ask every loop to end after its current call (a backstop to cancelling the run task)."""
        self._stopping.set()

    def held(self) -> list[str]:
        """The instruments whose lease this matcher holds."""
        return sorted(self.leases.held)

    def health(self) -> dict[str, object]:
        """/healthz's details: the leases held (a standby: none)."""
        return {"leases": self.held()}

    def is_alive(self) -> bool:
        """The leases were looked at, and every held instrument's loop came round recently (an idle loop still
        wakes every block_ms); one being prepared (a book rebuilt) counts as stalled. A standby is alive."""
        horizon = time.monotonic() - max(5.0, 3 * self.settings.block_ms / 1000)
        return self._looked and all(self._heartbeat.get(symbol, 0.0) > horizon for symbol in self.leases.held)

    async def prepare(self) -> None:
        """Take the leases this matcher should hold now and prepare those instruments (rebuild the book from
        PostgreSQL if Redis lost it, heal, ensure the group); run() does the same as leases come and go."""
        decisions = await self._look()
        async with asyncio.TaskGroup() as tasks:
            for symbol in decisions.acquired:
                tasks.create_task(self._prepare_engine(self._engines[symbol]))
        self._prepared.update(decisions.acquired)

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
        """Match the held instruments, taking and handing over leases, until stopped; then release them all."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._group = tasks
                tasks.create_task(self._manage(tasks))
                tasks.create_task(self._monitor())
        finally:
            self._group = None
            # A graceful stop hands every instrument over at once rather than after its lease expires.
            held = self.held()
            try:
                await asyncio.wait_for(self.leases.release_all(), 5)
            except (TimeoutError, *REDIS_DOWN) as exc:
                logger.warning("leases not released: they expire by themselves", extra={"error": repr(exc)})
            else:
                for symbol in held:
                    self._lease_gone(symbol, "lease_released", "lease released: the matcher stops")

    async def _manage(self, tasks: asyncio.TaskGroup) -> None:
        """Every poll: look at the leases, and run a loop for each held instrument."""
        down = False
        while not self._stopping.is_set():
            try:
                await self._look()
                if down:
                    logger.info("redis usable again: leases looked at", extra={"event": "redis_regained"})
                down = False
            except REDIS_DOWN as exc:
                if not down:
                    logger.error("redis connection lost: leases not renewed",
                                 extra={"event": "redis_lost", "error": repr(exc)})
                    down = True
            for symbol in self.held():
                if symbol not in self._loops and symbol not in self._handing_over:
                    self._loops[symbol] = tasks.create_task(self._loop(self._engines[symbol]))
            await asyncio.sleep(self._poll_s)

    async def _look(self) -> Decisions:
        decisions = await self.leases.poll()
        self._looked = True
        for symbol in decisions.lost:
            # Not waited for: match.lua refuses its next call anyway, and the renewals must go on.
            if (task := self._loops.pop(symbol, None)) is not None:
                task.cancel()
            self._lease_gone(symbol, "lease_lost", "lease lost: another matcher holds the instrument, or it expired")
        for symbol in decisions.release:
            if symbol in self._handing_over:
                continue
            self._handing_over.add(symbol)
            if self._group is None:
                await self._hand_over(symbol)
            else:  # in the background: the other leases are renewed meanwhile
                self._group.create_task(self._hand_over(symbol))
        for symbol in decisions.acquired:
            self._prepared.discard(symbol)
            self.metrics.leases.labels(symbol).set(1)
            logger.info("lease acquired", extra={"event": "lease_acquired", "instrument": symbol,
                                                 "consumer": self.settings.consumer})
        return decisions

    async def _hand_over(self, symbol: str) -> None:
        """Stop the instrument's loop (its current call completes), then give its lease up to the preferred holder."""
        try:
            await self._stop_loop(symbol)
            await self.leases.release(symbol)
            self._lease_gone(symbol, "lease_released", "lease released to the instrument's preferred matcher")
        except REDIS_DOWN as exc:
            logger.warning("lease not released: it expires by itself",
                           extra={"instrument": symbol, "error": repr(exc)})
        finally:
            self._handing_over.discard(symbol)

    def _lease_gone(self, symbol: str, event: str, message: str) -> None:
        self._prepared.discard(symbol)
        self.metrics.leases.labels(symbol).set(0)
        level = logging.WARNING if event == "lease_lost" else logging.INFO
        logger.log(level, message, extra={"event": event, "instrument": symbol, "consumer": self.settings.consumer})

    async def _stop_loop(self, symbol: str) -> None:
        task = self._loops.pop(symbol, None)
        if task is None or task.done():
            return
        task.cancel()
        # A cancel swallowed inside redis-py ends the loop at its next turn (no longer its symbol's) instead.
        await asyncio.wait({task}, timeout=self.settings.block_ms / 1000 + 5)

    async def _loop(self, engine: InstrumentMatcher) -> None:
        symbol = engine.instrument.symbol
        backoff = 0.05
        down = False
        me = asyncio.current_task()
        while not self._stopping.is_set() and self._loops.get(symbol) is me:
            if symbol in self._prepared:  # not alive while its first prepare (a rebuild) runs
                self._heartbeat[symbol] = time.monotonic()
            try:
                if down or symbol not in self._prepared:
                    # Taken over, or Redis may have restarted empty: rebuild the book if so, heal, re-create the group.
                    await self._prepare_engine(engine)
                    self._prepared.add(symbol)
                    if down:
                        logger.info("redis usable again: matching resumes",
                                    extra={"event": "redis_regained", "instrument": symbol})
                    down = False
                    backoff = 0.05
                    continue
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
                if str(exc).startswith("NOLEASE"):
                    # Paused or cut off past the lease: another matcher may hold it now. match.lua applied nothing.
                    self.leases.forget(symbol)
                    if self._loops.get(symbol) is me:
                        del self._loops[symbol]
                    self._lease_gone(symbol, "lease_lost", "lease lost: match.lua refused the call (NOLEASE)")
                    return
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
        for engine in [self._engines[symbol] for symbol in self.held()]:
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
