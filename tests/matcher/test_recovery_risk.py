"""The risk state after a rebuild (issue 16): the reference price of the price band and the per-client open-order
counts come back from PostgreSQL (Redis lost, or restored older), or from the book in Redis (an engine upgraded
from before they existed), so that the same commands meet the same limits as on a Redis that never lost them.

As in test_recovery.py and test_heal.py, two prefixes are fed the same commands: `a` loses its state and is
rebuilt, `b` keeps it; what follows must give the same trades and events on both. The limits are the workload's
(tests/data/risk_limits_workload.toml): ETH-USD's band and protection bite often, both instruments' caps do.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from redis.asyncio import Redis

from services.common.instruments import Instrument, Instruments, load_instruments
from services.common.keys import InstrumentKeys, instrument_keys
from services.common.wire import fields_to_dict
from services.matcher.engine import InstrumentMatcher
from services.matcher.metrics import MatcherMetrics
from services.matcher.risk_state import COUNTS_BUILT, REFERENCE, read_open_counts
from services.matcher.worker import Matcher
from tests.conftest import REPO_ROOT
from tests.matcher.recovery_state import (
    Command,
    backup,
    enqueue,
    enqueue_accepted,
    matcher_settings,
    persist,
    program,
    restore,
    wipe,
)
from tests.matcher.test_recovery import events_after, trades_after

WORKLOAD_LIMITS = REPO_ROOT / "tests" / "data" / "risk_limits_workload.toml"
SYMBOLS = ["BTC-USD", "ETH-USD"]


@pytest.fixture(scope="module")
def limited() -> Instruments:
    return load_instruments(WORKLOAD_LIMITS)


async def match_all(redis: Redis, instruments: Instruments, keys: InstrumentKeys) -> None:
    matcher = InstrumentMatcher(redis, instruments[keys.symbol], keys, "t", 64)
    await matcher.prepare()
    await matcher.take_lease()
    await matcher.drain()


async def risk_state(redis: Redis, keys: InstrumentKeys) -> tuple[str | None, dict[str, int]]:
    """(reference price in ticks, open-order counts)."""
    meta = fields_to_dict(await redis.hgetall(keys.meta))
    return meta.get(REFERENCE), await read_open_counts(redis, keys)


async def reasons(redis: Redis, keys: InstrumentKeys) -> Counter[str]:
    return Counter(fields_to_dict(f)["reason"] for _, f in await redis.xrange(keys.events))


def edge_orders(instrument: Instrument, reference: int, tag: str) -> list[Command]:
    """GTC limit orders of a client of their own at the band's edges around `reference` and one tick beyond."""
    scale = 100 * 100
    reach = reference * int(instrument.risk.price_band_bp) // scale
    prices = [reference - reach, reference - reach - 1, reference + reach, reference + reach + 1]
    return [{"cmd": "new", "order_id": f"{instrument.symbol}-{tag}-edge-{n}", "client_id": f"edge-{n}",
             "client_order_id": "", "side": "buy" if n < 2 else "sell", "type": "limit", "time_in_force": "GTC",
             "post_only": "1", "price_ticks": str(p), "quantity_lots": "10", "created_at": "1767225800000"}
            for n, p in enumerate(prices)]


async def later(redis: Redis, limited: Instruments, keys: InstrumentKeys, n: int) -> list[Command]:
    """What follows the loss: the band's edges around the reference, then the workload again."""
    reference = await redis.hget(keys.meta, REFERENCE)
    assert reference is not None
    return edge_orders(limited[keys.symbol], int(reference), "w2") + program(keys.symbol, 200, seed=300 + n, tag="w2")


async def assert_same_after(redis: Redis, ka: InstrumentKeys, kb: InstrumentKeys, trade_seq: int,
                            event_seq: int) -> None:
    """`a` (rebuilt, its own sequences from `trade_seq`/`event_seq` on) and `b` applied the same later commands
    alike, and hold the same risk state."""
    got_trades = await trades_after(redis, ka, trade_seq)
    assert got_trades and got_trades == await trades_after(redis, kb, trade_seq)
    got_events = await events_after(redis, ka, event_seq)
    assert got_events == await events_after(redis, kb, event_seq)
    # The band's edges: inside rested (post-only, they cross nothing), one tick beyond was rejected.
    edges = [(e[2], e[1], e[7]) for e in got_events if "edge" in (e[2] or "") and e[1] in ("accepted", "rejected")]
    assert [(kind, reason) for _, kind, reason in edges] == [
        ("accepted", ""), ("rejected", "price_band"), ("accepted", ""), ("rejected", "price_band")]
    assert await risk_state(redis, ka) == await risk_state(redis, kb)


async def test_a_wiped_redis_gets_the_reference_and_the_counts_back(
        redis: Redis, redis_url: str, key_prefix: str, limited: Instruments, db_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.matcher")
    a, b = key_prefix + "a:", key_prefix + "b:"
    for n, symbol in enumerate(SYMBOLS):
        for prefix in (a, b):
            keys = instrument_keys(prefix, symbol)
            await enqueue(redis, keys, program(symbol, 400, seed=100 + n, tag="w1"))
            await match_all(redis, limited, keys)
    await persist(redis, redis_url, a, db_url, limited)
    before = {s: await risk_state(redis, instrument_keys(a, s)) for s in SYMBOLS}
    seqs = {s: fields_to_dict(await redis.hgetall(instrument_keys(a, s).meta)) for s in SYMBOLS}
    # The workload met every limit.
    for symbol in SYMBOLS:
        seen = await reasons(redis, instrument_keys(b, symbol))
        assert seen["max_open_orders"] > 5, symbol
        reference, counts = before[symbol]
        assert reference is not None and max(counts.values()) == 15
    eth = await reasons(redis, instrument_keys(b, "ETH-USD"))
    assert eth["price_band"] > 5 and eth["market_protection"] > 2

    followers = {s: await later(redis, limited, instrument_keys(a, s), n) for n, s in enumerate(SYMBOLS)}
    assert await wipe(redis, a) > 0
    for symbol in SYMBOLS:  # accepted while Redis was empty: applied after the rebuild
        await enqueue(redis, instrument_keys(a, symbol), followers[symbol])
    matcher = Matcher(matcher_settings(redis_url, a, db_url, limited), redis, MatcherMetrics())
    await matcher.prepare()
    assert len([r for r in caplog.records if r.getMessage().startswith("recovery finished")]) == 2
    for symbol in SYMBOLS:
        assert await risk_state(redis, instrument_keys(a, symbol)) == before[symbol], symbol
        assert await redis.hget(instrument_keys(a, symbol).meta, COUNTS_BUILT) == b"1"
    for engine in matcher.engines:
        await engine.drain()
    for symbol in SYMBOLS:
        kb = instrument_keys(b, symbol)
        await enqueue(redis, kb, followers[symbol])
        await match_all(redis, limited, kb)
        await assert_same_after(redis, instrument_keys(a, symbol), kb, int(seqs[symbol]["trade_seq"]),
                                int(seqs[symbol]["event_seq"]))


async def test_a_restored_older_redis_is_healed_with_the_reference_and_the_counts(
        redis: Redis, redis_url: str, key_prefix: str, limited: Instruments, db_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.matcher")
    symbol = "ETH-USD"
    ka, kb = instrument_keys(key_prefix + "a:", symbol), instrument_keys(key_prefix + "b:", symbol)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, program(symbol, 300, seed=1, tag="p1", amends=0.1))
        await match_all(redis, limited, keys)
    await persist(redis, redis_url, ka.prefix, db_url, limited)
    older = await backup(redis, ka.prefix, symbol)
    older_state = await risk_state(redis, ka)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, program(symbol, 200, seed=3, tag="p3", amends=0.1))
        await match_all(redis, limited, keys)
    await persist(redis, redis_url, ka.prefix, db_url, limited)
    stored_meta = fields_to_dict(await redis.hgetall(kb.meta))
    newer_state = await risk_state(redis, kb)
    assert newer_state != older_state  # the reference or some count moved since the copy

    await restore(redis, ka.prefix, symbol, older)
    assert await risk_state(redis, ka) == older_state
    matcher = Matcher(matcher_settings(redis_url, ka.prefix, db_url, limited), redis, MatcherMetrics())
    await matcher.prepare()
    assert [r for r in caplog.records if getattr(r, "event", None) == "redis_healed"]
    assert await risk_state(redis, ka) == newer_state

    follow = await later(redis, limited, kb, 0)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, follow)
    await matcher.engines[1].drain()
    await match_all(redis, limited, kb)
    await assert_same_after(redis, ka, kb, int(stored_meta["trade_seq"]), int(stored_meta["event_seq"]))


async def test_an_upgraded_engine_builds_the_counts_and_the_reference_from_redis(
        redis: Redis, key_prefix: str, limited: Instruments, caplog: pytest.LogCaptureFixture) -> None:
    """meta without the mark (state written by a matcher from before issue 16): the first start builds the counts
    from the book and the reference from the trades stream, and matching goes on as if they had been kept."""
    caplog.set_level(logging.INFO, logger="services.matcher")
    symbol = "ETH-USD"
    ka, kb = instrument_keys(key_prefix + "a:", symbol), instrument_keys(key_prefix + "b:", symbol)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, program(symbol, 300, seed=7, tag="u1"))
        await match_all(redis, limited, keys)
    kept = await risk_state(redis, ka)
    await redis.hdel(ka.meta, COUNTS_BUILT, REFERENCE)
    await redis.delete(ka.open_counts)
    seqs = fields_to_dict(await redis.hgetall(ka.meta))

    follow = await later(redis, limited, kb, 1)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, follow)
        await match_all(redis, limited, keys)
    built = [r for r in caplog.records if getattr(r, "event", None) == "risk_state_built"]
    assert len(built) == 1 and built[0].resting_orders == sum(kept[1].values())
    await assert_same_after(redis, ka, kb, int(seqs["trade_seq"]), int(seqs["event_seq"]))
    # Built once: a later start leaves them alone.
    await redis.hset(ka.open_counts, "marker-of-this-test", "7")
    await match_all(redis, limited, ka)
    assert (await read_open_counts(redis, ka))["marker-of-this-test"] == 7
