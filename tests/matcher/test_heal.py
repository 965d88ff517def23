"""Redis comes back older than PostgreSQL (a restored backup): the matcher heals the instrument before matching.

Two prefixes are fed the same commands: `a` is persisted, and an older copy of its Redis state is restored
under it; `b` never is. After the heal, whatever follows must give on `a` what it gives on `b`: the same
trades and events with the same sequences, the same book, no command applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import group_lag
from services.common.instruments import Instruments
from services.common.keys import MATCHER_GROUP, InstrumentKeys, instrument_keys
from services.common.wire import OrderRecord, decode_record, fields_to_dict
from services.matcher import heal
from services.matcher.engine import InstrumentMatcher
from services.matcher.heal import HEALING, heal_if_behind
from services.matcher.metrics import MatcherMetrics
from services.matcher.worker import Matcher
from tests.matcher.recovery_state import (
    BookState,
    Command,
    backup,
    capture,
    enqueue_accepted,
    matcher_settings,
    persist,
    program,
    restore,
)
from tests.matcher.test_recovery import events_after, trades_after
from tests.processes import free_port

SYMBOL = "BTC-USD"

# Orders whose filled quantity is not the sum of their trades, or that were accepted or filled twice.
APPLIED_TWICE = text("""
    WITH fills AS (
        SELECT buy_order_id AS order_id, quantity FROM trades UNION ALL SELECT sell_order_id, quantity FROM trades)
    SELECT o.order_id FROM orders o LEFT JOIN (SELECT order_id, sum(quantity) AS q FROM fills GROUP BY order_id) f
        USING (order_id)
    WHERE o.filled_quantity <> coalesce(f.q, 0)
    UNION ALL
    SELECT order_id FROM order_events WHERE event IN ('accepted', 'rejected', 'filled')
    GROUP BY order_id, event = 'filled' HAVING count(*) > 1
""")
OPEN_LEVELS = text("""
    SELECT side, price, sum(remaining_quantity) FROM orders
    WHERE instrument = :i AND status IN ('open', 'partially_filled') GROUP BY side, price
""")


async def match_all(redis: Redis, instruments: Instruments, keys: InstrumentKeys) -> None:
    matcher = InstrumentMatcher(redis, instruments[keys.symbol], keys, "t", 64)
    await matcher.prepare()
    await matcher.take_lease()
    await matcher.drain()


def sweeps(state: BookState) -> list[Command]:
    """Market orders through the best levels of both sides and cancels of resting orders: records the
    older copy holds as open become filled or cancelled in PostgreSQL."""
    def market(side: str, against: list[str], n: int) -> Command:
        lots = sum(state.records[i].quantity_lots - state.records[i].filled_lots for i in against[:4])
        return {"cmd": "new", "order_id": f"{SYMBOL}-sweep-{side}-{n}", "client_id": "client-9",
                "client_order_id": "", "side": side, "type": "market", "time_in_force": "IOC", "post_only": "0",
                "price_ticks": "0", "quantity_lots": str(lots), "created_at": "1767225700000"}
    cancels = [{"cmd": "cancel", "order_id": i, "client_id": "client-1", "ts": "1767225700001"}
               for i in state.resting["buy"][4:7] + state.resting["sell"][4:7]]
    return [market("buy", state.resting["sell"], 1), market("sell", state.resting["buy"], 1), *cancels]


def _healed(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "event", None) == "redis_healed"]


async def _pg(db: AsyncEngine, query: str, **params: object) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(query), params)]


async def assert_postgresql_consistent(db: AsyncEngine, redis: Redis, instruments: Instruments,
                                       keys: InstrumentKeys, min_levels: int = 10) -> None:
    """Gapless unique sequences, no order applied twice, and the book is what PostgreSQL holds open."""
    for table in ("trades", "order_events"):
        [(count, distinct, top)] = await _pg(db, f"SELECT count(*), count(DISTINCT seq), max(seq) FROM {table} "
                                                 "WHERE instrument = :i", i=keys.symbol)
        assert count == distinct == top, table
    async with db.connect() as conn:
        assert (await conn.execute(APPLIED_TWICE)).all() == []
        levels = {tuple(row) for row in await conn.execute(OPEN_LEVELS, {"i": keys.symbol})}
    state = await capture(redis, instruments[keys.symbol], keys)
    book = {("buy", Decimal(lv.price), Decimal(lv.quantity)) for lv in state.book.bids} | \
        {("sell", Decimal(lv.price), Decimal(lv.quantity)) for lv in state.book.asks}
    assert levels == book and len(book) >= min_levels


def _same_records(records: dict[str, OrderRecord]) -> dict[str, OrderRecord]:
    return {k: msgspec.structs.replace(r, arrival_seq=0, updated_at=0) for k, r in records.items()}


async def all_records(redis: Redis, keys: InstrumentKeys) -> dict[str, OrderRecord]:
    return {k.decode(): decode_record(v)
            for k, v in (await redis.hgetall(keys.order_state)).items()}


# Plain orders and cancels; the same with amends and self-trade prevention modes mixed in (issue 15).
SHAPES = [pytest.param({}, id="orders"), pytest.param({"amends": 0.15, "stp": True}, id="amends_stp")]


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_restored_older_redis_is_healed_and_trades_on_as_if_never_restored(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, caplog: pytest.LogCaptureFixture, shape: dict[str, Any]) -> None:
    caplog.set_level(logging.INFO, logger="services.matcher")
    a, b = key_prefix + "a:", key_prefix + "b:"
    ka, kb = instrument_keys(a, SYMBOL), instrument_keys(b, SYMBOL)
    # accepted before the copy is taken, applied after it
    p2 = program(SYMBOL, 30, seed=2, tag="p2", **shape)
    # accepted into the restored Redis before the matcher starts
    p4 = program(SYMBOL, 40, seed=4, tag="p4", **shape)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, program(SYMBOL, 300, seed=1, tag="p1", **shape))
        await match_all(redis, instruments, keys)
    await persist(redis, redis_url, a, db_url, instruments)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, p2)
    older = await backup(redis, a, SYMBOL)
    restored_meta = fields_to_dict(await redis.hgetall(ka.meta))

    p3 = sweeps(await capture(redis, instruments[SYMBOL], ka)) + program(SYMBOL, 200, seed=3, tag="p3", **shape)
    for keys in (ka, kb):
        await match_all(redis, instruments, keys)
        await enqueue_accepted(redis, keys, p3)
        await match_all(redis, instruments, keys)
    await persist(redis, redis_url, a, db_url, instruments)
    stored_meta = fields_to_dict(await redis.hgetall(kb.meta))
    before_records = await all_records(redis, kb)

    await restore(redis, a, SYMBOL, older)
    for keys in (ka, kb):
        await enqueue_accepted(redis, keys, p4)
    # The older copy says some orders rest or await their command that PostgreSQL holds as final.
    stale = {i: (r.status, before_records[i].status) for i, r in (await all_records(redis, ka)).items()
             if i in before_records and r.status != before_records[i].status}
    assert {("open", "filled"), ("open", "cancelled"), ("accepted", "filled")} <= set(stale.values())

    metrics = MatcherMetrics()
    matcher = Matcher(matcher_settings(redis_url, a, db_url, instruments), redis, metrics)
    await matcher.prepare()
    [line] = _healed(caplog)
    assert line.levelno == logging.WARNING
    assert (line.redis_trade_seq, line.redis_event_seq) == (int(restored_meta["trade_seq"]),
                                                            int(restored_meta["event_seq"]))
    assert (line.trade_seq, line.event_seq) == (int(stored_meta["trade_seq"]), int(stored_meta["event_seq"]))
    assert line.commands_skipped == len(p2)  # on the restored stream, applied per PostgreSQL's markers
    # An amend that changes nothing writes no event, so PostgreSQL holds no marker of it.
    unchanged_at_most = sum(c["cmd"] == "amend" for c in p3)
    assert len(p3) - unchanged_at_most <= line.commands_only_in_postgresql <= len(p3)
    assert line.records_awaiting_command == sum(c["cmd"] == "new" for c in p4)
    assert line.records_corrected >= sum(c["cmd"] == "new" for c in p2)
    assert (line.merged_trades, line.merged_events, line.merge_failed) == (0, 0, 0)  # all persisted already
    assert (line.missing_trades, line.missing_events, line.orders_lost, line.records_removed) == (0, 0, 0, 0)
    assert metrics.heals.labels(SYMBOL)._value.get() == 1
    assert [metrics.heal_missing.labels(SYMBOL, k)._value.get() for k in ("trades", "events", "orders")] == [0] * 3
    for i, record in (await all_records(redis, ka)).items():  # no restored state PostgreSQL contradicts
        if i in before_records:
            assert _same_records({i: record}) == _same_records({i: before_records[i]}), i

    await matcher.engines[0].drain()
    await match_all(redis, instruments, kb)
    old_trade, old_event = int(stored_meta["trade_seq"]), int(stored_meta["event_seq"])
    got_trades = await trades_after(redis, ka, int(restored_meta["trade_seq"]))
    assert got_trades == await trades_after(redis, kb, old_trade) and len(got_trades) > 5
    assert [int(t[1]) for t in got_trades] == list(range(old_trade + 1, old_trade + 1 + len(got_trades)))
    got_events = await events_after(redis, ka, int(restored_meta["event_seq"]))
    assert got_events == await events_after(redis, kb, old_event)
    after_a, after_b = [await capture(redis, instruments[SYMBOL], k) for k in (ka, kb)]
    assert (after_a.book.bids, after_a.book.asks) == (after_b.book.bids, after_b.book.asks)
    assert after_a.resting == after_b.resting
    records_b = await all_records(redis, kb)
    records_a = await all_records(redis, ka)
    assert all(_same_records({i: r}) == _same_records({i: records_b[i]}) for i, r in records_a.items())

    # Every trade after the heal lands in PostgreSQL with its new seq: none is dropped as a duplicate.
    await persist(redis, redis_url, a, db_url, instruments)
    stored = await _pg(db, "SELECT trade_id, seq::text, price::text, quantity::text FROM trades WHERE seq > :s",
                       s=old_trade)
    assert sorted(stored) == sorted((t[0], t[1], t[2], t[3]) for t in got_trades)
    await assert_postgresql_consistent(db, redis, instruments, ka)


async def test_the_restored_streams_reach_postgresql_before_the_book_is_rebuilt(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The older Redis holds trades and events PostgreSQL lacks (the persister had not written them), while
    PostgreSQL holds a later trade: the heal writes them first, then counts the trades nothing holds."""
    caplog.set_level(logging.INFO, logger="services.matcher")
    keys = instrument_keys(key_prefix, SYMBOL)
    await enqueue_accepted(redis, keys, program(SYMBOL, 200, seed=5, tag="p1"))
    await match_all(redis, instruments, keys)
    await persist(redis, redis_url, key_prefix, db_url, instruments)
    await enqueue_accepted(redis, keys, program(SYMBOL, 150, seed=6, tag="p2"))
    await match_all(redis, instruments, keys)
    before = await capture(redis, instruments[SYMBOL], keys)
    trade_seq, event_seq = int(before.meta["trade_seq"]), int(before.meta["event_seq"])
    [(stored_events,)] = await _pg(db, "SELECT count(*) FROM order_events")
    unpersisted = event_seq - int(stored_events)
    assert unpersisted > 100
    async with db.begin() as conn:  # written by a timeline this Redis never saw; the 4 seqs before it are lost
        await conn.execute(text(
            "INSERT INTO trades VALUES (:id, 'BTC-USD', :seq, 100, 1, 'buy', 'x', 'y', 'x', 'y', 'a', 'b', now())"),
            {"id": f"BTC-USD-{trade_seq + 5}", "seq": trade_seq + 5})

    metrics = MatcherMetrics()
    matcher = Matcher(matcher_settings(redis_url, key_prefix, db_url, instruments), redis, metrics)
    await matcher.prepare()
    [line] = _healed(caplog)
    assert line.levelno == logging.ERROR  # something is missing
    assert line.merged_events >= unpersisted and line.merged_trades > 0
    assert (line.missing_trades, line.missing_events, line.orders_lost) == (4, 0, 0)
    assert line.commands_skipped == 0
    assert metrics.heal_missing.labels(SYMBOL, "trades")._value.get() == 4
    [(count,)] = await _pg(db, "SELECT count(*) FROM order_events")
    assert count == event_seq  # the restored stream's events are in PostgreSQL

    after = await capture(redis, instruments[SYMBOL], keys)
    assert (after.book.bids, after.book.asks) == (before.book.bids, before.book.asks)
    assert after.resting == before.resting
    assert _same_records(after.records) == _same_records(before.records)
    assert (after.meta["trade_seq"], after.meta["event_seq"]) == (str(trade_seq + 5), str(event_seq))

    await enqueue_accepted(redis, keys, program(SYMBOL, 100, seed=7, tag="p3"))
    await matcher.engines[0].drain()
    trades = await trades_after(redis, keys, trade_seq)
    assert trades and trades[0][1] == str(trade_seq + 6)
    await persist(redis, redis_url, key_prefix, db_url, instruments)
    [(stored_trades,)] = await _pg(db, "SELECT count(*) FROM trades WHERE seq > :s", s=trade_seq + 5)
    assert stored_trades == len(trades)


async def test_a_heal_cut_short_blocks_matching_and_is_redone(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="services.matcher")
    keys, instrument = instrument_keys(key_prefix, SYMBOL), instruments[SYMBOL]
    await enqueue_accepted(redis, keys, program(SYMBOL, 150, seed=8, tag="p1"))
    await match_all(redis, instruments, keys)
    await persist(redis, redis_url, key_prefix, db_url, instruments)
    before = await capture(redis, instrument, keys)
    older = await backup(redis, key_prefix, SYMBOL)
    await enqueue_accepted(redis, keys, program(SYMBOL, 100, seed=9, tag="p2"))
    await match_all(redis, instruments, keys)
    await persist(redis, redis_url, key_prefix, db_url, instruments)
    newer = await capture(redis, instrument, keys)
    await restore(redis, key_prefix, SYMBOL, older)
    assert await heal_if_behind(redis, instrument, keys, f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
                                connect_timeout_s=0.5) is None  # cannot compare: best effort, no heal

    real_write_book = heal.write_book

    async def cut_short(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("connection lost mid-heal")

    monkeypatch.setattr(heal, "write_book", cut_short)
    with pytest.raises(RedisConnectionError):
        await heal_if_behind(redis, instrument, keys, db_url)
    assert await redis.hexists(keys.meta, HEALING)
    await enqueue_accepted(redis, keys, program(SYMBOL, 20, seed=10, tag="p3"))
    lag = await group_lag(redis, keys.orders, MATCHER_GROUP)
    with pytest.raises(ResponseError, match=r"^HEALING"):
        await InstrumentMatcher(redis, instrument, keys, "t", 64).step()
    assert await group_lag(redis, keys.orders, MATCHER_GROUP) == lag  # nothing was even read
    monkeypatch.setattr(heal, "write_book", real_write_book)

    # The matcher taking the instrument's lease prepares it first, so it heals before any call (a loop that meets
    # HEALING heals too); the heal then waits for PostgreSQL, whatever it takes.
    matcher = Matcher(matcher_settings(redis_url, key_prefix, db_url, instruments), redis, MatcherMetrics())
    running = asyncio.create_task(matcher.run())
    try:
        for _ in range(200):
            if _healed(caplog) and await group_lag(redis, keys.orders, MATCHER_GROUP) == (0, 0):
                break
            await asyncio.sleep(0.05)
    finally:
        matcher.stop()  # as the process does: a cancel inside redis-py's wait_for can be swallowed
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
    assert not await redis.hexists(keys.meta, HEALING)
    [line] = _healed(caplog)
    assert line.trade_seq == int(newer.meta["trade_seq"]) and line.event_seq == int(newer.meta["event_seq"])
    assert line.redis_trade_seq == int(before.meta["trade_seq"])
    await persist(redis, redis_url, key_prefix, db_url, instruments)
    await assert_postgresql_consistent(db, redis, instruments, keys)


async def test_nothing_to_heal(redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments,
                               db_url: str) -> None:
    keys = instrument_keys(key_prefix, SYMBOL)
    assert await heal_if_behind(redis, instruments[SYMBOL], keys, db_url) is None  # no meta: recovery's case
    await enqueue_accepted(redis, keys, program(SYMBOL, 60, seed=11, tag="p1"))
    await match_all(redis, instruments, keys)
    assert await heal_if_behind(redis, instruments[SYMBOL], keys, db_url) is None  # nothing stored yet
    await persist(redis, redis_url, key_prefix, db_url, instruments)
    dumped = await backup(redis, key_prefix, SYMBOL)
    assert await heal_if_behind(redis, instruments[SYMBOL], keys, db_url) is None  # level with PostgreSQL
    assert await backup(redis, key_prefix, SYMBOL) == dumped
