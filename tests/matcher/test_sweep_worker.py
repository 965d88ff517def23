"""The matcher's loop calls match.lua while idle, so deadlines (dead man's switch, cancel-on-disconnect) are
applied without any command arriving: within MATCHER_SWEEP_MS plus one call of passing."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from services.common.instruments import Instruments
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from services.matcher.worker import Matcher
from tests.matcher.order_harness import OrderHarness, now_ms
from tests.processes import free_port


async def test_an_idle_matcher_applies_a_deadline_within_the_sweep_period(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments) -> None:
    btc = {"BTC-USD": instruments["BTC-USD"]}
    # The idle wait is the shorter of MATCHER_BLOCK_MS and MATCHER_SWEEP_MS: a long block must not delay a sweep.
    settings = MatcherSettings(
        redis_url=redis_url, key_prefix=key_prefix, instruments=btc, consumer="test",  # type: ignore[arg-type]
        batch_size=64, block_ms=4000, metrics_host="127.0.0.1", metrics_port=0, monitor_interval_s=60,
        log_level="INFO", database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none",
        recovery_backoff_max_s=0.2, sweep_ms=100)
    h = OrderHarness(redis, instruments["BTC-USD"], key_prefix)
    await h.prepare()
    await h.new("buy", "100", "1", order_id="b1")
    await h.run()
    matcher = Matcher(settings, redis, MatcherMetrics())  # takes the harness's lease back: the same holder id
    await matcher.prepare()
    loop = asyncio.create_task(matcher.run())
    try:
        await asyncio.sleep(0.3)  # idle: blocked in its wait for commands
        deadline = now_ms()
        await h.arm_client("client-1", deadline)
        started = time.monotonic()
        while (await h.status("b1"))[0] != "cancelled":
            assert time.monotonic() - started < 1.0, "the deadline was not applied while idle"
            await asyncio.sleep(0.01)
        assert await h.status("b1") == ("cancelled", "0", "dead_man_switch")
        assert (await h.order("b1")).updated_at - deadline < 500
    finally:
        matcher.stop()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
