"""Redis loses its state: the matcher rebuilds each book from PostgreSQL, and trading carries on as if it had not.

Two prefixes are fed the same commands: `a` is persisted, wiped and rebuilt; `b` keeps its state. Whatever
follows must give the same trades, events and book on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import with_database
from services.common.groups import group_lag
from services.common.instruments import Instruments
from services.common.keys import MATCHER_GROUP, InstrumentKeys, instrument_keys
from services.common.scripts import MatchKeys, astuple
from services.common.wire import EventEntry, OrderRecord, TradeEntry, fields_to_dict
from services.matcher import recovery
from services.matcher.engine import InstrumentMatcher
from services.matcher.metrics import MatcherMetrics
from services.matcher.recovery import recover_instrument, state_lost
from services.matcher.worker import Matcher
from tests.conftest import TWO_INSTRUMENTS
from tests.matcher.harness import Harness
from tests.matcher.recovery_state import (
    BookState,
    amend,
    capture,
    enqueue,
    matcher_settings,
    persist,
    program,
    wipe,
)
from tests.persister.proxy import TcpProxy
from tests.processes import Service, free_port

ORDERS = 400  # commands per instrument before the loss
MORE = 150  # commands per instrument after it


@dataclass
class Scenario:
    """Prefix `a` persisted (then wiped by the test), prefix `b` the same program un-wiped."""

    a: str
    b: str
    symbols: list[str]
    before: dict[str, BookState]  # a's state, as it was when persisted
    snapshot_seq: dict[str, int]  # a snapshot row's book_seq, where the test stored one
    trade_ids: set[str]  # every trade id in the database
    shape: dict[str, Any] = field(default_factory=dict)  # program()'s options (amends, stp) before and after


async def _match_all(redis: Redis, instruments: Instruments, prefix: str, symbol: str) -> None:
    matcher = InstrumentMatcher(redis, instruments[symbol], instrument_keys(prefix, symbol), "t", 64)
    await matcher.prepare()
    await matcher.take_lease()
    await matcher.drain()


async def build(redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
                db_url: str, symbols: list[str], orders: int = ORDERS, **shape: Any) -> Scenario:
    a, b = key_prefix + "a:", key_prefix + "b:"
    for n, symbol in enumerate(symbols):
        commands = program(symbol, orders, seed=100 + n, tag="w1", **shape)
        for prefix in (a, b):
            await enqueue(redis, instrument_keys(prefix, symbol), commands)
            await _match_all(redis, instruments, prefix, symbol)
    await persist(redis, redis_url, a, db_url, instruments)
    before = {s: await capture(redis, instruments[s], instrument_keys(a, s)) for s in symbols}
    for state in before.values():
        records = list(state.records.values())
        # The workload is worth rebuilding: partial fills rest, levels hold several orders, trades happened.
        assert len(records) > 60 and any(r.status == "partially_filled" for r in records)
        assert len({(r.side, r.price_ticks) for r in records}) < len(records)
        assert int(state.meta["trade_seq"]) > 20
    snapshot_seq: dict[str, int] = {}
    if "ETH-USD" in symbols:
        # A snapshot's book seq above the event seq is not something match.lua produces; it proves the
        # rebuilt book seq resumes after every snapshot's whatever they hold.
        snapshot_seq["ETH-USD"] = int(before["ETH-USD"].meta["event_seq"]) + 7
        async with db.begin() as conn:
            await conn.execute(text(
                "INSERT INTO orderbook_snapshots (instrument, book_seq, taken_at, bids, asks) "
                "VALUES ('ETH-USD', :seq, now(), '[]', '[]')"), {"seq": snapshot_seq["ETH-USD"]})
    async with db.connect() as conn:
        trade_ids = {r[0] for r in await conn.execute(text("SELECT trade_id FROM trades"))}
    return Scenario(a, b, symbols, before, snapshot_seq, trade_ids, shape)


def _trade(t: TradeEntry) -> tuple[str, ...]:
    return (t.trade_id, t.seq, t.price, t.quantity, t.taker_side, t.taker_order_id, t.maker_order_id,
            t.buy_order_id, t.sell_order_id, t.buyer_client_id, t.seller_client_id)


def _event(e: EventEntry) -> tuple[str | None, ...]:
    return (e.seq, e.event, e.order_id, e.status, e.filled_quantity, e.remaining_quantity, e.filled_quote,
            e.reason, e.side, e.price, e.quantity, e.created_at)


async def trades_after(redis: Redis, keys: InstrumentKeys, seq: int) -> list[tuple[str, ...]]:
    entries = [msgspec.convert(fields_to_dict(f), TradeEntry) for _, f in await redis.xrange(keys.trades)]
    return [_trade(t) for t in entries if int(t.seq) > seq]


async def events_after(redis: Redis, keys: InstrumentKeys, seq: int) -> list[tuple[str | None, ...]]:
    entries = [msgspec.convert(fields_to_dict(f), EventEntry) for _, f in await redis.xrange(keys.events)]
    return [_event(e) for e in entries if int(e.seq) > seq]


def later_program(scenario: Scenario, symbol: str, n: int) -> list[dict[str, str]]:
    """New commands: a market order that must trade first, cancels of rebuilt orders, then random ones."""
    state = scenario.before[symbol]
    first = [{"cmd": "new", "order_id": f"{symbol}-sweep", "client_id": "client-9", "client_order_id": "",
              "side": "buy", "type": "market", "time_in_force": "IOC", "post_only": "0", "price_ticks": "0",
              "quantity_lots": str(state.records[state.resting["sell"][0]].quantity_lots * 2),
              "created_at": "1767225700000"}]
    cancels = [{"cmd": "cancel", "order_id": order_id, "client_id": "client-1", "ts": "1767225700001"}
               for order_id in state.resting["buy"][:3] + state.resting["sell"][2:5]]
    moves: list[dict[str, str]] = []
    if scenario.shape.get("amends"):
        # Rebuilt orders amended: a larger quantity (to the back), a smaller one (keeps its place), a new price.
        for side, sign in (("buy", -1), ("sell", 1)):
            first_id, second_id, third_id = state.resting[side][3:6]
            first_r, second_r, third_r = (state.records[i] for i in (first_id, second_id, third_id))
            moves += [amend(first_id, 1, None, first_r.quantity_lots + 1),
                      amend(second_id, 2, None, max(second_r.filled_lots + 1, second_r.quantity_lots // 2)),
                      amend(third_id, 3, third_r.price_ticks + sign * 2, None)]
    return first + cancels + moves + program(symbol, MORE, seed=200 + n, tag="w2", **scenario.shape)


def _without(records: dict[str, OrderRecord], *names: str) -> dict[str, OrderRecord]:
    return {k: msgspec.structs.replace(r, **dict.fromkeys(names, 0)) for k, r in records.items()}


async def assert_same_as_before(redis: Redis, instruments: Instruments, scenario: Scenario) -> None:
    """Prefix a, just rebuilt, holds the book it had when persisted."""
    for symbol in scenario.symbols:
        before = scenario.before[symbol]
        after = await capture(redis, instruments[symbol], instrument_keys(scenario.a, symbol))
        assert after.book.bids == before.book.bids and after.book.asks == before.book.asks
        assert len(after.book.bids) > 5 and len(after.book.asks) > 5
        assert after.resting == before.resting  # same orders, same time priority
        assert after.records_without_arrival() == before.records_without_arrival()
        # Arrival numbers are renumbered 1..n in the original order, across both sides.
        n = len(after.records)
        by_arrival = sorted(after.records, key=lambda i: after.records[i].arrival_seq)
        assert by_arrival == sorted(before.records, key=lambda i: before.records[i].arrival_seq)
        assert sorted(r.arrival_seq for r in after.records.values()) == list(range(1, n + 1))
        event_seq = int(before.meta["event_seq"])
        book_seq = max(event_seq, scenario.snapshot_seq.get(symbol, 0))
        assert {k: after.meta[k] for k in ("trade_seq", "event_seq", "book_seq", "arrival_seq", "last_id")} == {
            "trade_seq": before.meta["trade_seq"], "event_seq": str(event_seq), "book_seq": str(book_seq),
            "arrival_seq": str(n), "last_id": "0-0"}
        assert after.book.seq == book_seq


async def continue_on_both(redis: Redis, instruments: Instruments, scenario: Scenario, db: AsyncEngine,
                           redis_url: str, db_url: str) -> None:
    """The commands after the loss give on the rebuilt prefix exactly what they give on the un-wiped one."""
    totals = {"trades": 0, "events": 0}
    for n, symbol in enumerate(scenario.symbols):
        a, b = instrument_keys(scenario.a, symbol), instrument_keys(scenario.b, symbol)
        old = scenario.before[symbol].meta
        old_trade, old_event = int(old["trade_seq"]), int(old["event_seq"])
        await enqueue(redis, b, later_program(scenario, symbol, n))
        await _match_all(redis, instruments, scenario.b, symbol)

        got_trades = await trades_after(redis, a, 0)
        assert got_trades == await trades_after(redis, b, old_trade)
        assert got_trades[0][1] == str(old_trade + 1)  # the sweep traded first, right after the old max
        assert not {t[0] for t in got_trades} & scenario.trade_ids
        got_events = await events_after(redis, a, 0)
        assert got_events == await events_after(redis, b, old_event)
        assert got_events[0][0] == str(old_event + 1)
        assert ("cancelled", "user") in {(e[1], e[7]) for e in got_events}  # rebuilt orders cancel normally

        after_a = await capture(redis, instruments[symbol], a)
        after_b = await capture(redis, instruments[symbol], b)
        assert (after_a.book.bids, after_a.book.asks) == (after_b.book.bids, after_b.book.asks)
        assert after_a.resting == after_b.resting
        assert _without(after_a.records, "arrival_seq", "updated_at") == \
            _without(after_b.records, "arrival_seq", "updated_at")
        book = await redis.xrange(a.book, count=1)
        rebuilt_book_seq = max(old_event, scenario.snapshot_seq.get(symbol, 0))
        assert fields_to_dict(book[0][1])["seq"] == str(rebuilt_book_seq + 1)
        totals["trades"] += len(got_trades)
        totals["events"] += len(got_events)

    # Persisting the new streams adds every new row: none collided with a stored one (ON CONFLICT would
    # have dropped it silently).
    async with db.connect() as conn:
        before_counts = (await conn.execute(text(
            "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM order_events)"))).one()
    await persist(redis, redis_url, scenario.a, db_url, instruments)
    async with db.connect() as conn:
        after_counts = (await conn.execute(text(
            "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM order_events)"))).one()
    assert tuple(after_counts) == (before_counts[0] + totals["trades"], before_counts[1] + totals["events"])


async def test_rebuilt_book_is_the_original_and_trading_continues_identically(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.matcher")
    scenario = await build(redis, redis_url, key_prefix, instruments, db, db_url, ["BTC-USD", "ETH-USD"])
    assert await wipe(redis, scenario.a) > 0
    # Ingest accepts orders while Redis is empty: they wait on the recreated stream for the rebuild.
    for n, symbol in enumerate(scenario.symbols):
        await enqueue(redis, instrument_keys(scenario.a, symbol), later_program(scenario, symbol, n))

    matcher = Matcher(matcher_settings(redis_url, scenario.a, db_url, instruments), redis, MatcherMetrics())
    await matcher.prepare()  # the start-up path: rebuild, then the group
    await assert_same_as_before(redis, instruments, scenario)
    for engine in matcher.engines:
        await engine.drain()
    await continue_on_both(redis, instruments, scenario, db, redis_url, db_url)

    finished = [r for r in caplog.records if r.getMessage().startswith("recovery finished")]
    assert sorted(r.instrument for r in finished) == ["BTC-USD", "ETH-USD"]
    eth = next(r for r in finished if r.instrument == "ETH-USD")
    assert eth.orders == len(scenario.before["ETH-USD"].records)
    assert eth.book_seq == scenario.snapshot_seq["ETH-USD"]


async def test_redis_wiped_under_a_running_matcher(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A restart the client's retries hide: the next call finds no group, and the matcher rebuilds first."""
    caplog.set_level(logging.INFO, logger="services.matcher")
    scenario = await build(redis, redis_url, key_prefix, instruments, db, db_url, ["BTC-USD", "ETH-USD"])
    matcher = Matcher(matcher_settings(redis_url, scenario.a, db_url, instruments), redis, MatcherMetrics())
    await matcher.prepare()
    assert not [r for r in caplog.records if r.getMessage().startswith("recovery")]  # meta was there
    running = asyncio.create_task(matcher.run())
    try:
        await asyncio.sleep(0.3)
        await wipe(redis, scenario.a)
        for n, symbol in enumerate(scenario.symbols):
            await enqueue(redis, instrument_keys(scenario.a, symbol), later_program(scenario, symbol, n))
        for symbol in scenario.symbols:
            keys = instrument_keys(scenario.a, symbol)
            for _ in range(200):
                if await group_lag(redis, keys.orders, MATCHER_GROUP) == (0, 0):
                    break
                await asyncio.sleep(0.05)
            assert await group_lag(redis, keys.orders, MATCHER_GROUP) == (0, 0)
    finally:
        matcher.stop()  # as the process does: a cancel inside redis-py's wait_for can be swallowed
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
    messages = [r.getMessage() for r in caplog.records]
    # The wipe took the lease too: the next call finds no lease (or no group), and the lease taken again is
    # prepared, the book rebuilt, before any command.
    assert any(m.startswith(("matcher group missing", "lease lost")) for m in messages)
    assert sum(m.startswith("recovery finished") for m in messages) == 2
    await continue_on_both(redis, instruments, scenario, db, redis_url, db_url)


async def test_a_rebuild_cut_short_is_redone_and_a_second_run_changes_nothing(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = await build(redis, redis_url, key_prefix, instruments, db, db_url, ["BTC-USD"], orders=300)
    instrument, keys = instruments["BTC-USD"], instrument_keys(scenario.a, "BTC-USD")
    await wipe(redis, scenario.a)
    # Leftovers the rebuild must clear: a level and an order that are not in the stored book.
    await redis.zadd(keys.bid_levels, {"7": -7})
    await redis.hset(keys.bid_depth, "7", "5")
    await redis.zadd(keys.bid_orders, {"0000000000000001:ghost": -7})

    # The matcher dies after a few pipelines: some orders are back, meta is not.
    monkeypatch.setattr(recovery, "CHUNK", 20)
    flaky = Redis.from_url(redis_url)
    calls = 0
    real_pipeline = flaky.pipeline

    def pipeline(*args: object, **kwargs: object) -> object:
        pipe = real_pipeline(*args, **kwargs)  # type: ignore[arg-type]
        execute = pipe.execute

        async def cut_short(*a: object, **k: object) -> object:
            nonlocal calls
            calls += 1
            if calls > 3:
                raise RedisConnectionError("connection lost mid-rebuild")
            return await execute(*a, **k)  # type: ignore[arg-type]

        pipe.execute = cut_short  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(flaky, "pipeline", pipeline)
    try:
        with pytest.raises(RedisConnectionError):
            await recover_instrument(flaky, instrument, keys, db_url)
    finally:
        await flaky.aclose()
    assert await state_lost(redis, keys)
    assert 0 < await redis.zcard(keys.bid_orders) + await redis.zcard(keys.ask_orders) \
        < len(scenario.before["BTC-USD"].records)

    first = await recover_instrument(redis, instrument, keys, db_url)
    assert first is not None and first.orders == len(scenario.before["BTC-USD"].records)
    await assert_same_as_before(redis, instruments, scenario)
    dumped = {k: await redis.dump(k) for k in astuple(MatchKeys.of(keys))[4:]}
    assert await recover_instrument(redis, instrument, keys, db_url) is None  # meta is there now
    assert {k: await redis.dump(k) for k in astuple(MatchKeys.of(keys))[4:]} == dumped


async def test_fresh_install_does_nothing(redis: Redis, key_prefix: str, instruments: Instruments, db_url: str,
                                          postgres_server_url: str) -> None:
    absent = with_database(postgres_server_url, f"absent_{uuid.uuid4().hex[:12]}")
    for url in (db_url, absent):  # an empty database, and none at all
        for symbol, instrument in instruments.items():
            keys = instrument_keys(key_prefix, symbol)
            assert await recover_instrument(redis, instrument, keys, url) is None
    assert [k async for k in redis.scan_iter(match=f"{key_prefix}*")] == []


def _closed_port_url() -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/trading"


async def test_meta_present_the_matcher_starts_without_postgresql(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, tmp_path: Path) -> None:
    for symbol, instrument in instruments.items():
        harness = Harness(redis, instrument, key_prefix)
        await harness.prepare()
        await harness.new("buy", "100", "1")
        await harness.run()
        keys = instrument_keys(key_prefix, symbol)
        assert await asyncio.wait_for(recover_instrument(redis, instrument, keys, _closed_port_url()), 1) is None

    port = free_port()
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix, "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS),
           "MATCHER_METRICS_PORT": str(port), "DATABASE_URL": _closed_port_url(),
           "MATCHER_CONSUMER": "test"}  # the harness's holder id: it takes the harness's leases over
    service = Service("matcher", env, f"http://127.0.0.1:{port}/healthz", tmp_path / "matcher.log").start()
    assert service.stop() == 0
    log = (tmp_path / "matcher.log").read_text()
    assert "recovery started" not in log  # no rebuild: the state in Redis is used as it is
    assert "could not compare redis with postgresql" in log  # the best-effort check said why it was skipped


async def test_postgresql_unavailable_at_start_the_rebuild_waits_for_it(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.matcher")
    scenario = await build(redis, redis_url, key_prefix, instruments, db, db_url, ["BTC-USD"], orders=200)
    instrument, keys = instruments["BTC-USD"], instrument_keys(scenario.a, "BTC-USD")
    await wipe(redis, scenario.a)
    target = make_url(db_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = target.set(port=proxy.port).render_as_string(hide_password=False)
    await proxy.cut()
    try:
        task = asyncio.create_task(recover_instrument(redis, instrument, keys, proxied, backoff_initial_s=0.05,
                                                      backoff_max_s=0.2))
        await asyncio.sleep(1.0)
        assert not task.done()
        assert await state_lost(redis, keys) and await redis.zcard(keys.bid_orders) == 0
        waits = [r for r in caplog.records if r.getMessage().startswith("postgresql unavailable")]
        assert waits and waits[0].levelno == logging.ERROR and waits[-1].attempt >= 3
        await proxy.restore()
        done = await asyncio.wait_for(task, 10)
    finally:
        await proxy.close()
    assert done is not None and done.orders == len(scenario.before["BTC-USD"].records)
    await assert_same_as_before(redis, instruments, scenario)
