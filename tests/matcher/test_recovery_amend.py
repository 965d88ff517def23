"""Recovery after amends (issue 15): a re-queued order comes back behind the orders queued before its amend,
with its amended price and quantity; a decrease keeps its place; the per-client index is rebuilt."""

from __future__ import annotations

from collections import Counter

import msgspec
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.keys import InstrumentKeys, instrument_keys
from services.common.wire import OrderRecord, TradeEntry, fields_to_dict
from services.matcher.engine import InstrumentMatcher
from services.matcher.metrics import MatcherMetrics
from services.matcher.recovery import recover_instrument
from services.matcher.worker import Matcher
from tests.matcher.recovery_state import capture, enqueue, enqueue_accepted, matcher_settings, persist, wipe
from tests.matcher.test_recovery import assert_same_as_before, build, continue_on_both, later_program
from tests.persister.order_events import T0, Book

SYMBOL = "BTC-USD"


def history() -> Book:
    """Bids at 100.00 queued B, C, A, D once the amends are applied; G at 99.00; E the one ask."""
    book = Book(SYMBOL)
    book.accept("A", "buy", "100.00", "1", client="mm-1")
    book.accept("B", "buy", "100.00", "2", client="mm-2")
    book.accept("C", "buy", "100.00", "3", client="mm-1", stp="cancel_both")
    book.amend("A", "1", quantity="4")  # an increase: behind B and C
    book.amend("C", "0", quantity="2")  # a decrease: keeps its place before A
    book.accept("D", "buy", "101.00", "1", client="mm-2")
    book.amend("D", "1", price="100.00")  # re-priced to 100.00: behind A, though accepted before A's amend
    book.accept("E", "sell", "105.00", "1", client="mm-3")
    book.amend("E", "1", price="104.00")
    book.accept("F", "sell", "106.00", "1", client="mm-1")
    book.cancel("F", "dead_man_switch")
    book.accept("G", "buy", "99.00", "2", client="mm-1", stp="decrement")
    book.fill("G", "0.5", "49.50")
    book.amend("G", "0", reason="self_trade_prevented", quantity="1.5")  # an STP decrement keeps its place
    book.amend_rejected("B", "post_only_would_cross")
    return book


async def stored_history(redis: Redis, redis_url: str, prefix: str, db_url: str, instruments: Instruments,
                         book: Book) -> InstrumentKeys:
    """The history's events persisted to PostgreSQL through the persister, then Redis wiped."""
    keys = instrument_keys(prefix, SYMBOL)
    async with redis.pipeline(transaction=False) as pipe:
        for fields in book.events:
            pipe.xadd(keys.events, fields)  # type: ignore[arg-type]
        await pipe.execute()
    await persist(redis, redis_url, prefix, db_url, instruments)
    await wipe(redis, prefix)
    return keys


async def index(redis: Redis, keys: InstrumentKeys, *clients: str) -> dict[str, list[tuple[str, int]]]:
    """Each client's live-orders zset, members with their scores."""
    return {c: [(m.decode(), int(s)) for m, s in await redis.zrange(keys.client_orders(c), 0, -1, withscores=True)]
            for c in clients}


async def test_a_requeued_order_comes_back_behind_later_ones_with_its_amended_price_and_quantity(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    instrument = instruments[SYMBOL]
    keys = await stored_history(redis, redis_url, key_prefix, db_url, instruments, history())
    async with db.connect() as conn:
        queued = dict((await conn.execute(text("SELECT order_id, queued_seq FROM orders"))).all())
    assert queued == {"A": 4, "B": 2, "C": 3, "D": 7, "E": 9, "F": 10, "G": 12}

    # Left from before: index members of orders that are not live (F was cancelled, the ghosts never were);
    # and an order ingest accepted after the loss, waiting on the stream (its member is accept.lua's).
    await redis.zadd(keys.client_orders("mm-1"), {"F": T0, "ghost": T0})
    await redis.zadd(keys.client_orders("mm-9"), {"ghost-2": T0})
    await enqueue_accepted(redis, keys, [{
        "cmd": "new", "order_id": "H", "client_id": "mm-2", "client_order_id": "", "side": "buy", "type": "limit",
        "time_in_force": "GTC", "post_only": "0", "price_ticks": "9800", "quantity_lots": "100000000",
        "created_at": str(T0 + 100)}])

    done = await recover_instrument(redis, instrument, keys, db_url)
    assert done is not None and (done.orders, done.skipped) == (6, 0)
    state = await capture(redis, instrument, keys)
    assert state.resting == {"buy": ["B", "C", "A", "D", "G"], "sell": ["E"]}
    # Arrival numbers follow the queue places across both sides: B 2, C 3, A 4, D 7, E 9, G 12.
    assert {i: r.arrival_seq for i, r in state.records.items()} == {"B": 1, "C": 2, "A": 3, "D": 4, "E": 5, "G": 6}
    assert [(lv.price, lv.quantity) for lv in state.book.bids] == [("100.00", "9"), ("99.00", "1")]
    assert [(lv.price, lv.quantity) for lv in state.book.asks] == [("104.00", "1")]

    def shape(r: OrderRecord) -> tuple[object, ...]:
        return (r.price_ticks, r.quantity_lots, r.filled_lots, r.status, r.reason, r.self_trade_prevention,
                r.session)
    assert {i: shape(r) for i, r in state.records.items()} == {
        "A": (10000, 400_000_000, 0, "open", "", "none", ""),
        "B": (10000, 200_000_000, 0, "open", "", "none", ""),
        "C": (10000, 200_000_000, 0, "open", "", "cancel_both", ""),
        "D": (10000, 100_000_000, 0, "open", "", "none", ""),
        "E": (10400, 100_000_000, 0, "open", "", "none", ""),
        "G": (9900, 150_000_000, 50_000_000, "partially_filled", "", "decrement", ""),
    }
    # Every live order in its client's index, scored by created_at; nothing else.
    assert await index(redis, keys, "mm-1", "mm-2", "mm-3", "mm-9") == {
        "mm-1": [("A", T0), ("C", T0), ("G", T0)], "mm-2": [("B", T0), ("D", T0), ("H", T0 + 100)],
        "mm-3": [("E", T0)], "mm-9": []}

    # Trading goes on in that priority: a market sell of 9 at 100.00 meets B, C, A, then D.
    await redis.xadd(keys.orders, {
        "cmd": "new", "order_id": "S", "client_id": "taker", "client_order_id": "", "side": "sell",
        "type": "market", "time_in_force": "IOC", "post_only": "0", "price_ticks": "0",
        "quantity_lots": "900000000", "created_at": str(T0 + 200)})
    matcher = InstrumentMatcher(redis, instrument, keys, "t", 64)
    await matcher.prepare()
    await matcher.take_lease()
    await matcher.drain()
    trades = [msgspec.convert(fields_to_dict(f), TradeEntry) for _, f in await redis.xrange(keys.trades)]
    assert [(t.maker_order_id, t.price, t.quantity) for t in trades] == [
        ("B", "100.00", "2"), ("C", "100.00", "2"), ("A", "100.00", "4"), ("D", "100.00", "1")]
    state = await capture(redis, instrument, keys)
    assert state.resting == {"buy": ["G", "H"], "sell": ["E"]}
    assert await index(redis, keys, "mm-1", "mm-2", "mm-3") == {  # the filled makers left it
        "mm-1": [("G", T0)], "mm-2": [("H", T0 + 100)], "mm-3": [("E", T0)]}


async def test_a_book_shaped_by_amends_and_self_trade_prevention_is_rebuilt_as_it_was(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    """The real matcher's amends (re-queued, kept places, re-priced takers) and STP outcomes, persisted, wiped
    and rebuilt: the same book, priorities and records as the prefix never wiped, and trading on alike."""
    scenario = await build(redis, redis_url, key_prefix, instruments, db, db_url, [SYMBOL], amends=0.2, stp=True)
    events = [fields_to_dict(f) for _, f in await redis.xrange(instrument_keys(scenario.a, SYMBOL).events)]
    kinds = Counter((e["event"], e.get("requeued", ""), e["reason"]) for e in events)
    # The program is worth rebuilding: both kinds of amend, STP decrements and cancels happened.
    assert kinds["amended", "1", ""] > 10 and kinds["amended", "0", ""] > 5
    assert kinds["amended", "0", "self_trade_prevented"] > 0 and kinds["cancelled", "", "self_trade_prevented"] > 0
    before = scenario.before[SYMBOL]
    assert len({r.self_trade_prevention for r in before.records.values()}) == 5

    await wipe(redis, scenario.a)
    await enqueue(redis, instrument_keys(scenario.a, SYMBOL), later_program(scenario, SYMBOL, 0))
    matcher = Matcher(matcher_settings(redis_url, scenario.a, db_url, instruments), redis, MatcherMetrics())
    await matcher.prepare()
    await assert_same_as_before(redis, instruments, scenario)
    keys = instrument_keys(scenario.a, SYMBOL)
    clients = sorted({r.client_id for r in before.records.values()})
    live: dict[str, list[str]] = {c: [] for c in clients}
    for order_id, record in sorted(before.records.items(), key=lambda item: (item[1].created_at, item[0])):
        live[record.client_id].append(order_id)
    assert {c: [m for m, _ in members] for c, members in (await index(redis, keys, *clients)).items()} == live

    for engine in matcher.engines:
        await engine.drain()
    await continue_on_both(redis, instruments, scenario, db, redis_url, db_url)
