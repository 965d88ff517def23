"""Matcher failover under flow (issue 17): real matcher processes holding leases, the holder of an instrument killed
with SIGKILL while orders keep coming, the takeover timed, and every command applied exactly once."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import group_info, group_lag
from services.common.instruments import Instruments, load_instruments
from services.common.keys import MATCHER_GROUP, instrument_keys
from services.common.redis_conn import AnyRedis, RedisMode
from services.common.wire import decode_record, text
from tests.matcher.order_harness import OrderHarness
from tests.persister.runner import workers
from tests.persister.workload import settings_for, wait_until_read
from tests.processes import Service, free_port

LEASE_MS = 1000
Stop = Literal["kill", "pause", "term"]
# Taken over within the lease plus 1 s (the contract), measured from the kill to the first command applied.
TAKEOVER_LIMIT_S = LEASE_MS / 1000 + 1.0
MID = {"BTC-USD": 100, "ETH-USD": 100, "SOL-USD": 100}


def instruments_toml(symbols: list[str], path: Path) -> Path:
    """An instruments file of `symbols`, tick 0.01, risk limits off."""
    blocks = [f'[[instrument]]\nsymbol = "{s}"\nbase = "{s.split("-")[0]}"\nquote = "USD"\ntick = "0.01"\n'
              'lot = "0.00000001"\nmin_quantity = "0.00000001"\nmax_quantity = "1000"\nmax_price = "10000000"\n'
              "price_band_pct = 0\nmarket_protection_pct = 0\nmax_open_orders = 0\n" for s in symbols]
    path.write_text("\n".join(blocks))
    return path


@dataclass
class Matchers:
    """`python -m services.matcher` processes matcher-1..N on one prefix, by id."""

    env: dict[str, str]
    logs: Path
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, consumer: str) -> None:
        port = free_port()
        service = Service("matcher", {**self.env, "MATCHER_CONSUMER": consumer, "MATCHER_METRICS_PORT": str(port)},
                          f"http://127.0.0.1:{port}/healthz", self.logs / f"{consumer}.log")
        self.services[consumer] = service.start(30)

    def kill(self, consumer: str) -> None:
        self.services[consumer].kill()

    def signal(self, consumer: str, sig: signal.Signals) -> None:
        process = self.services[consumer].process
        assert process is not None
        process.send_signal(sig)

    def wait_exit(self, consumer: str) -> int:
        """The exit code of a matcher already signalled to stop."""
        process = self.services[consumer].process
        assert process is not None
        return process.wait(15)

    def log(self, consumer: str) -> str:
        return (self.logs / f"{consumer}.log").read_text()

    def stop_all(self) -> None:
        for service in self.services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGCONT)  # a paused one could not stop
        for service in self.services.values():
            if service.process is not None and service.process.poll() is None:
                service.stop()


class Flow:
    """Orders through accept.lua on every instrument, a few hundred a second in all, until stopped."""

    def __init__(self, redis: AnyRedis, instruments: Instruments, prefix: str, seed: int) -> None:
        self.harnesses = {s: OrderHarness(redis, i, prefix) for s, i in instruments.items()}
        self.posted: dict[str, list[str]] = {s: [] for s in instruments}
        self.rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def stopped(self) -> bool:
        return self._task is None or self._task.done()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def post(self, symbol: str) -> str:
        """One order: mostly GTC limits a few ticks around the middle (a third cross), some IOC and market."""
        rng, n = self.rng, next(self._ids)
        side = rng.choice(("buy", "sell"))
        price = str(Decimal(MID.get(symbol, 100)) + Decimal(rng.randint(-5, 5)) / 100)
        roll = rng.random()
        order_id = f"{symbol}-f{n}"
        if roll < 0.05:
            await self.harnesses[symbol].new(side, None, "0.5", order_id=order_id, type="market")
        else:
            await self.harnesses[symbol].new(side, price, str(rng.randint(1, 20) / 10), order_id=order_id,
                                             tif="IOC" if roll < 0.15 else "GTC", client=f"client-{n % 7}")
        self.posted[symbol].append(order_id)
        return order_id

    async def _run(self) -> None:
        while not self._stop.is_set():
            for symbol in self.harnesses:
                await self.post(symbol)
            await asyncio.sleep(0.005)

    async def applied(self, symbol: str, order_id: str) -> bool:
        packed = await self.harnesses[symbol].redis.hget(self.harnesses[symbol].keys.order_state, order_id)
        return packed is not None and decode_record(packed).status != "accepted"


async def holder(redis: AnyRedis, prefix: str, symbol: str) -> str | None:
    value = await redis.get(instrument_keys(prefix, symbol).matcher_lease)
    return None if value is None else value.decode()


async def wait_for(condition: Any, within: float, what: str) -> float:
    """Seconds until the async `condition()` holds; fails after `within`."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"not {what} within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def kill_holder_and_time_takeover(redis: AnyRedis, prefix: str, matchers: Matchers, flow: Flow,
                                        symbol: str, how: Stop = "kill") -> tuple[str, str, float]:
    """SIGKILL (SIGSTOP: "pause", SIGTERM: "term") the holder of `symbol`; the seconds until another matcher applied
    an order posted just after it (the holder's id, the new holder's, the seconds)."""
    victim = await holder(redis, prefix, symbol)
    assert victim is not None and victim in matchers.services, victim
    if how == "kill":
        matchers.kill(victim)
    else:
        matchers.signal(victim, signal.SIGSTOP if how == "pause" else signal.SIGTERM)
    killed = time.monotonic()
    probe = await flow.post(symbol)

    async def taken_over() -> bool:
        # On SIGTERM the holder may still apply the probe in its last call: the lease must have moved too.
        return await holder(redis, prefix, symbol) not in (None, victim) and await flow.applied(symbol, probe)

    await wait_for(taken_over, TAKEOVER_LIMIT_S + 5, f"{probe} applied and {symbol} held by another than {victim}")
    took = time.monotonic() - killed
    successor = await holder(redis, prefix, symbol)
    assert successor is not None and successor != victim
    return victim, successor, took


async def assert_applied_exactly_once(redis: AnyRedis, instruments: Instruments, prefix: str, flow: Flow) -> None:
    """Every posted order applied once: one `accepted` event each, gapless sequences, fills that add up, and the
    matcher group's position at the stream's end."""
    for symbol, instrument in instruments.items():
        keys = instrument_keys(prefix, symbol)
        h = flow.harnesses[symbol]
        assert await group_lag(redis, keys.orders, MATCHER_GROUP) == (0, 0), symbol
        info = await group_info(redis, keys.orders, MATCHER_GROUP)
        [(last_id, _)] = await redis.xrevrange(keys.orders, count=1)
        assert info is not None and text(info["last-delivered-id"]) == text(last_id), symbol
        assert text(await redis.hget(keys.meta, "last_id") or b"") == text(last_id), symbol  # applied up to the end
        events, trades = await h.events(), await h.trades()
        assert [int(e.seq) for e in events] == list(range(1, len(events) + 1)), symbol
        assert [int(t.seq) for t in trades] == list(range(1, len(trades) + 1)), symbol
        assert len({t.trade_id for t in trades}) == len(trades)
        accepted = Counter(e.order_id for e in events if e.event == "accepted")
        assert set(accepted) == set(flow.posted[symbol]) and set(accepted.values()) == {1}, symbol
        finals = Counter(e.order_id for e in events if e.status in ("filled", "cancelled", "rejected"))
        assert set(finals.values()) <= {1}, symbol
        filled: Counter[str] = Counter()
        for t in trades:
            lots = instrument.quantity_lots(Decimal(t.quantity))
            filled[t.buy_order_id] += lots
            filled[t.sell_order_id] += lots
        for order_id in flow.posted[symbol]:
            record = await h.order(order_id)
            assert record.status != "accepted", order_id
            assert record.filled_lots == filled[order_id], (order_id, record, filled[order_id])


def times_summary(times: list[float], how: str = "SIGKILL") -> str:
    return (f"takeover after {how} over {len(times)} tries (MATCHER_LEASE_MS={LEASE_MS}): "
            f"min {min(times):.3f} s, median {statistics.median(times):.3f} s, max {max(times):.3f} s")


def matcher_env(redis_url: str, prefix: str, db_url: str, instruments_file: Path, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix, "DATABASE_URL": db_url,
            "INSTRUMENTS_FILE": str(instruments_file), "MATCHER_LEASE_MS": str(LEASE_MS), "MATCHER_BLOCK_MS": "200",
            "LOG_LEVEL": os.environ.get("FAILOVER_LOG_LEVEL", "INFO"), **extra}


async def failover(redis: AnyRedis, redis_url: str, prefix: str, db_url: str, db: AsyncEngine, tmp_path: Path,
                   kills: int, symbols: list[str], mode: RedisMode = "single", how: Stop = "kill") -> list[float]:
    """Two matchers, orders flowing on every instrument, `kills` times the holder of the next instrument killed
    (and started again under its id; "term": stopped gracefully, and started again) or ("pause") paused past its
    lease (SIGSTOP) and resumed; then every command applied and persisted exactly once. The takeover times."""
    file = instruments_toml(symbols, tmp_path / "instruments.toml")
    instruments = load_instruments(file)
    matchers = Matchers(matcher_env(redis_url, prefix, db_url, file, REDIS_MODE=mode), tmp_path)
    flow = Flow(redis, instruments, prefix, seed=17)
    times: list[float] = []
    async with workers(settings_for(redis_url, prefix, db_url, file, redis_mode=mode), instruments):
        try:
            for consumer in ("matcher-1", "matcher-2"):
                await asyncio.to_thread(matchers.start, consumer)

            async def all_held() -> bool:
                return all([await holder(redis, prefix, s) for s in symbols])

            await wait_for(all_held, 10, "every instrument held")
            flow.start()
            await asyncio.sleep(0.5)
            for n in range(kills):
                victim, successor, took = await kill_holder_and_time_takeover(
                    redis, prefix, matchers, flow, symbols[n % len(symbols)], how)
                times.append(took)
                assert took < TAKEOVER_LIMIT_S, (victim, successor, took)
                if how == "pause":
                    # Resumed after its lease was taken: it applies nothing more of it (match.lua: NOLEASE).
                    lost = matchers.log(victim).count('"lease_lost"')
                    matchers.signal(victim, signal.SIGCONT)

                    async def noticed(victim: str = victim, lost: int = lost) -> bool:
                        return matchers.log(victim).count('"lease_lost"') > lost

                    await wait_for(noticed, 5, f"{victim} noticing its lease lost")
                else:
                    if how == "term":
                        assert await asyncio.to_thread(matchers.wait_exit, victim) == 0
                    await asyncio.to_thread(matchers.start, victim)  # back under its id: takes its instruments back
                await asyncio.sleep(0.3)
            await flow.stop()

            async def drained() -> bool:
                return all([await group_lag(redis, instrument_keys(prefix, s).orders, MATCHER_GROUP) == (0, 0)
                            for s in symbols])

            await wait_for(drained, 15, "every command applied")
        finally:
            if not flow.stopped:
                await flow.stop()
            await asyncio.to_thread(matchers.stop_all)
        await assert_applied_exactly_once(redis, instruments, prefix, flow)
        await wait_until_read(redis, instruments, prefix, 60)
    posted = sum(len(ids) for ids in flow.posted.values())
    trades = sum([await redis.xlen(instrument_keys(prefix, s).trades) for s in symbols])
    events = sum([await redis.xlen(instrument_keys(prefix, s).events) for s in symbols])
    async with db.connect() as conn:
        assert (await conn.execute(sql("SELECT count(*), count(DISTINCT order_id) FROM orders"))).one() == \
            (posted, posted)
        assert (await conn.execute(sql("SELECT count(*) FROM trades"))).scalar_one() == trades
        assert (await conn.execute(sql("SELECT count(*) FROM order_events"))).scalar_one() == events
        # Every order's row holds what its last event says (no event lost or applied twice on the way).
        stale = (await conn.execute(sql("SELECT count(*) FROM orders WHERE status = 'accepted'"))).scalar_one()
        assert stale == 0
    return times
