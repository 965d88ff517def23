"""services/matcher/lease.py and match.lua's lease check: one matcher per instrument, spread, handed over."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.applications import Starlette

from services.common.groups import group_lag
from services.common.instruments import Instruments
from services.common.keys import MATCHER_GROUP, instrument_keys
from services.common.ops_http import ops_app
from services.common.scripts import LEASE_RELEASE, LEASE_RENEW, MATCHER_REGISTRY, ScriptInterface
from services.matcher import lease
from services.matcher.engine import InstrumentMatcher
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from services.matcher.worker import Matcher
from tests.matcher.harness import Harness

SYMBOLS = ("BTC-USD", "ETH-USD")


@pytest.mark.parametrize("interface", [LEASE_RENEW, LEASE_RELEASE, MATCHER_REGISTRY], ids=lambda i: i.filename)
def test_the_lease_scripts_use_exactly_their_declared_keys_and_argv(interface: ScriptInterface) -> None:
    code = re.sub(r"--[^\n]*", "", resources.files(interface.package).joinpath(interface.filename).read_text())
    assert re.findall(r"\b(?:KEYS|ARGV)\s*\[", code) == []
    assert set(re.findall(r"\bK_[A-Z0-9_]+\b", code)) == {f"K_{n.upper()}" for n in interface.keys}
    assert set(re.findall(r"\bA_[A-Z0-9_]+\b", code)) == {f"A_{n.upper()}" for n in interface.argv}


async def test_acquire_renew_release_and_expiry(redis: Redis, key_prefix: str) -> None:
    key = instrument_keys(key_prefix, "BTC-USD").matcher_lease
    assert key == f"{key_prefix}lease:{{BTC-USD}}"
    assert await lease.acquire(redis, key, "a", 300)
    assert await lease.holder_of(redis, key) == "a"
    assert 0 < await redis.pttl(key) <= 300
    assert not await lease.acquire(redis, key, "b", 300)  # held: NX refuses
    assert not await lease.renew(redis, key, "b", 5000)  # not b's: untouched
    assert await redis.pttl(key) <= 300
    assert await lease.renew(redis, key, "a", 5000)
    assert 300 < await redis.pttl(key) <= 5000
    assert await lease.acquire(redis, key, "a", 5000)  # a restart under the same id takes it back
    assert not await lease.release(redis, key, "b")
    assert await lease.holder_of(redis, key) == "a"
    assert await lease.release(redis, key, "a")
    assert await lease.holder_of(redis, key) is None
    assert not await lease.renew(redis, key, "a", 5000)  # a released lease is not renewed back into being

    assert await lease.acquire(redis, key, "a", 100)
    await asyncio.sleep(0.2)
    assert await lease.holder_of(redis, key) is None  # expired
    assert not await lease.renew(redis, key, "a", 5000)
    assert await lease.acquire(redis, key, "b", 5000)


async def test_the_registry_lists_live_matchers_and_drops_expired_ones(redis: Redis, key_prefix: str) -> None:
    assert await lease.register(redis, key_prefix, "m-1", 150) == ["m-1"]
    assert await lease.register(redis, key_prefix, "m-2", 5000) == ["m-1", "m-2"]
    await asyncio.sleep(0.2)
    assert await lease.register(redis, key_prefix, "m-2", 5000) == ["m-2"]
    await lease.unregister(redis, key_prefix, "m-2")
    assert await redis.zcard(lease.registry_key(key_prefix)) == 0


def test_rendezvous_preference_is_stable_and_moves_only_what_it_must() -> None:
    matchers = [f"matcher-{i}" for i in range(1, 6)]
    symbols = [f"S{i}-USD" for i in range(200)]
    first = {s: lease.preference(s, matchers)[0] for s in symbols}
    assert set(first.values()) == set(matchers)  # spread over every matcher
    assert all(lease.preference(s, list(reversed(matchers)))[0] == first[s] for s in symbols)  # order-free
    without = {s: lease.preference(s, matchers[:-1])[0] for s in symbols}
    # Only the instruments the departed matcher preferred move, each to its second choice.
    assert {s for s in symbols if without[s] != first[s]} == {s for s in symbols if first[s] == "matcher-5"}
    assert all(without[s] == lease.preference(s, matchers)[1] for s in symbols if first[s] == "matcher-5")
    assert lease.poll_interval_ms(2000) == 250 and lease.poll_interval_ms(1000) == 125


async def test_match_lua_applies_nothing_without_the_lease(redis: Redis, key_prefix: str,
                                                            instruments: Instruments) -> None:
    h = Harness(redis, instruments["BTC-USD"], key_prefix)
    await h.prepare()
    await h.new("sell", "100", "1", order_id="s1")
    await h.run()
    await h.new("buy", "100", "1", order_id="b1")
    events = await redis.xlen(h.keys.events)
    lag = await group_lag(redis, h.keys.orders, MATCHER_GROUP)
    meta = await redis.hgetall(h.keys.meta)
    other = InstrumentMatcher(redis, instruments["BTC-USD"], h.keys, "other", 64)
    with pytest.raises(ResponseError, match=r"^NOLEASE"):
        await other.step()  # held by the harness ("test")
    await redis.delete(h.keys.matcher_lease)
    with pytest.raises(ResponseError, match=r"^NOLEASE"):
        await h.matcher.step()  # held by no one
    # Nothing applied, nothing even read, no deadline swept.
    assert await group_lag(redis, h.keys.orders, MATCHER_GROUP) == lag
    assert await redis.xlen(h.keys.events) == events and await redis.hgetall(h.keys.meta) == meta
    assert await h.status("s1") == ("open", "0", "")
    await h.matcher.take_lease()
    assert await h.run() == 1
    assert await h.status("b1") == ("filled", "1", "")


def settings(redis_url: str, prefix: str, instruments: Instruments, consumer: str, lease_ms: int) -> MatcherSettings:
    return MatcherSettings(
        redis_url=redis_url, key_prefix=prefix, instruments=instruments, consumer=consumer, batch_size=64,
        block_ms=100, metrics_host="127.0.0.1", metrics_port=0, monitor_interval_s=0.2, log_level="INFO",
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none", recovery_backoff_max_s=0.2,
        lease_ms=lease_ms)


@contextlib.asynccontextmanager
async def running(matcher: Matcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(matcher.run())
    try:
        yield task
    finally:
        await stop(matcher, task)


async def stop(matcher: Matcher, task: asyncio.Task[None]) -> None:
    """As the process stops on SIGTERM (services/common/runner.cancel_on_stop)."""
    matcher.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def until(condition: Callable[[], bool], within: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "not within the time allowed"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def prepared(redis: Redis, prefix: str, instruments: Instruments) -> dict[str, Harness]:
    """A book on each instrument, built by the harness, whose lease is then given up."""
    harnesses = {}
    for symbol in SYMBOLS:
        h = Harness(redis, instruments[symbol], prefix)
        await h.prepare()
        await h.new("sell", "100", "1", order_id=f"{symbol}-s")
        await h.run()
        await redis.delete(h.keys.matcher_lease)
        harnesses[symbol] = h
    return harnesses


async def test_two_matchers_share_the_instruments_and_a_third_stands_by(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments) -> None:
    harnesses = await prepared(redis, key_prefix, instruments)
    # Rendezvous hashing: with matcher-1 and -2, BTC-USD prefers matcher-2 and ETH-USD matcher-1; with
    # matcher-3 too, BTC-USD prefers matcher-3, so matcher-2 holds nothing.
    assert [lease.preference(s, ["matcher-1", "matcher-2"])[0] for s in SYMBOLS] == ["matcher-2", "matcher-1"]
    assert [lease.preference(s, ["matcher-1", "matcher-2", "matcher-3"])[0] for s in SYMBOLS] == \
        ["matcher-3", "matcher-1"]
    metrics = {m: MatcherMetrics() for m in ("matcher-1", "matcher-2", "matcher-3")}
    matchers = {m: Matcher(settings(redis_url, key_prefix, instruments, m, 1000), redis, metrics[m])
                for m in metrics}
    m1, m2, m3 = matchers.values()
    async with running(m1), running(m2):
        await until(lambda: m1.held() == ["ETH-USD"] and m2.held() == ["BTC-USD"], 5)
        await until(lambda: m1.is_alive() and m2.is_alive(), 5)
        for symbol, h in harnesses.items():  # each instrument matched by its holder
            await h.new("buy", "100", "1", order_id=f"{symbol}-b")
        for symbol, h in harnesses.items():
            await wait_status(h, f"{symbol}-b", "filled")
        assert metrics["matcher-1"].leases.labels("ETH-USD")._value.get() == 1
        assert metrics["matcher-1"].leases.labels("BTC-USD")._value.get() == 0

        async with running(m3) as third:
            # BTC-USD moves to its preferred holder: matcher-2 stops its loop, then releases the lease.
            await until(lambda: m3.held() == ["BTC-USD"] and m2.held() == [] and m1.held() == ["ETH-USD"], 5)
            await until(m2.is_alive, 2)  # a standby is alive
            assert await lease.holder_of(redis, harnesses["BTC-USD"].keys.matcher_lease) == "matcher-3"
            await harnesses["BTC-USD"].new("sell", "101", "1", order_id="late")
            await wait_status(harnesses["BTC-USD"], "late", "open")
            app = ops_app(metrics["matcher-2"].registry, m2.is_alive, m2.health)
            assert await healthz(app) == (200, {"status": "ok", "leases": []})
            app = ops_app(metrics["matcher-3"].registry, m3.is_alive, m3.health)
            assert await healthz(app) == (200, {"status": "ok", "leases": ["BTC-USD"]})

            # A graceful stop releases at once: matcher-2 takes BTC-USD back well before the lease would expire.
            stopped = time.monotonic()
            await stop(m3, third)
            assert await lease.holder_of(redis, harnesses["BTC-USD"].keys.matcher_lease) in (None, "matcher-2")
            await until(lambda: m2.held() == ["BTC-USD"], 1)
            assert time.monotonic() - stopped < 0.9
    for h in harnesses.values():  # both stopped: every lease released, the registry empty
        assert await lease.holder_of(redis, h.keys.matcher_lease) is None
    assert await redis.zcard(lease.registry_key(key_prefix)) == 0


async def test_a_matcher_that_lost_its_lease_stops_and_another_takes_over(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="services.matcher")
    harnesses = await prepared(redis, key_prefix, instruments)
    btc = {"BTC-USD": instruments["BTC-USD"]}
    first = Matcher(settings(redis_url, key_prefix, btc, "matcher-1", 1000), redis, MatcherMetrics())
    async with running(first):
        await until(lambda: first.held() == ["BTC-USD"], 5)
        # As if matcher-1 were paused past its lease: another takes the instrument.
        key = harnesses["BTC-USD"].keys.matcher_lease
        await redis.set(key, "matcher-9", px=60_000)
        await harnesses["BTC-USD"].new("buy", "100", "1", order_id="b")
        await until(lambda: first.held() == [], 3)
        await asyncio.sleep(0.3)
        keys = harnesses["BTC-USD"].keys  # matcher-1 applied nothing, read nothing
        assert await redis.hget(keys.order_state, "b") is None
        assert await group_lag(redis, keys.orders, MATCHER_GROUP) == (1, 0)
        lost = [r for r in caplog.records if getattr(r, "event", None) == "lease_lost"]
        assert lost and lost[0].instrument == "BTC-USD"
        await redis.delete(key)  # matcher-9 gone: matcher-1 takes it again
        await until(lambda: first.held() == ["BTC-USD"], 3)
        await wait_status(harnesses["BTC-USD"], "b", "filled")
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("lease_acquired") == 2 and events.count("lease_released") == 1  # the stop released it


async def wait_status(h: Harness, order_id: str, status: str, within: float = 5) -> None:
    started = time.monotonic()
    while await h.redis.hget(h.keys.order_state, order_id) is None or (await h.order(order_id)).status != status:
        assert time.monotonic() - started < within, (order_id, await h.order(order_id))
        await asyncio.sleep(0.02)


async def healthz(app: Starlette) -> tuple[int, object]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
        answer = await client.get("/healthz")
    return answer.status_code, answer.json()

