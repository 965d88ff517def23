"""Order management's events (issue 15) in PostgreSQL: an amend moves the order's row (price, quantity, queue
place), an amend_rejected is recorded without touching it, the new cancel reasons land like `user`."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.instruments import Instruments
from services.common.keys import instrument_keys
from services.common.wire import fields_to_dict
from services.matcher.engine import InstrumentMatcher
from services.persister.records import Entry, MalformedEntry, WriteSet, deadletter_key, decode, stream_refs
from services.persister.writer import Writer
from tests.conftest import TWO_INSTRUMENTS
from tests.matcher.recovery_state import enqueue, program
from tests.persister.order_events import T0, Book
from tests.persister.runner import workers
from tests.persister.workload import expected, settings_for, stored, wait_until_read


def scenario() -> Book:
    book = Book()
    book.accept("o1", "buy", "100.00", "1", stp="decrement")
    book.amend("o1", "1", price="101.00", quantity="2")  # re-priced: to the back of 101.00
    book.fill("o1", "0.5", "50.50")
    book.amend("o1", "0", reason="self_trade_prevented", quantity="1.2")  # an STP decrement keeps the place
    book.amend_rejected("o1", "post_only_would_cross")
    book.cancel("o1", "dead_man_switch")
    for order_id, reason in (("o2", "disconnect"), ("o3", "halted"), ("o4", "self_trade_prevented")):
        book.accept(order_id, "sell", "105.00", "0.3", client="mm-2")
        book.cancel(order_id, reason)
    book.accept("o5", "buy", "99.00", "3")
    book.amend("o5", "1", quantity="5")  # an increase re-queues at the same price
    book.accept("o6", "sell", "110.00", "4", stp="cancel_maker")
    book.amend("o6", "0", quantity="2.5")  # a decrease keeps the place
    book.amend_rejected("o6", "quantity_not_above_filled")
    book.unknown_amend("ghost", "mm-1")
    return book


D = Decimal
# order_id, price, quantity, filled, remaining, filled_quote, average_price, status, reason, last_event_seq,
# queued_seq, self_trade_prevention
WANT_ORDERS = [
    ("o1", D("101.00"), D("1.2"), D("0.5"), D("0.7"), D("50.50"), D("101.00"), "cancelled", "dead_man_switch", 6, 2,
     "decrement"),
    ("o2", D("105.00"), D("0.3"), D(0), D("0.3"), D(0), None, "cancelled", "disconnect", 8, 7, "none"),
    ("o3", D("105.00"), D("0.3"), D(0), D("0.3"), D(0), None, "cancelled", "halted", 10, 9, "none"),
    ("o4", D("105.00"), D("0.3"), D(0), D("0.3"), D(0), None, "cancelled", "self_trade_prevented", 12, 11, "none"),
    ("o5", D("99.00"), D("5"), D(0), D("5"), D(0), None, "open", None, 14, 14, "none"),
    ("o6", D("110.00"), D("2.5"), D(0), D("2.5"), D(0), None, "open", None, 16, 15, "cancel_maker"),
]
ORDER_QUERY = text("""
    SELECT order_id, price, quantity, filled_quantity, remaining_quantity, filled_quote, average_price, status,
           reason, last_event_seq, queued_seq, self_trade_prevention
    FROM orders ORDER BY order_id""")


async def stored_orders(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(ORDER_QUERY)]


async def test_amends_and_new_cancel_reasons_reach_the_orders_and_events_tables(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    keys = instrument_keys(key_prefix, "BTC-USD")
    book = scenario()
    # Among them, an amended event without `requeued`: it cannot be stored, whatever the database does.
    bad = {**book.events[1], "seq": "999", "order_id": "o-bad"}
    del bad["requeued"]
    async with redis.pipeline(transaction=False) as pipe:
        for fields in [*book.events[:5], bad, *book.events[5:]]:
            pipe.xadd(keys.events, fields)  # type: ignore[arg-type]
        await pipe.execute()
    settings = settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS, max_deliveries=1)
    async with workers(settings, instruments):
        await wait_until_read(redis, instruments, key_prefix, 20)

    assert await stored_orders(db) == WANT_ORDERS
    async with db.connect() as conn:
        events = [tuple(r) for r in await conn.execute(text(
            "SELECT seq, event, order_id, status, remaining_quantity, reason FROM order_events ORDER BY seq"))]
        o6 = (await conn.execute(text("SELECT updated_at FROM orders WHERE order_id = 'o6'"))).scalar_one()
    assert [e[:3] for e in events] == [(int(e["seq"]), e["event"], e["order_id"]) for e in book.events]
    # amend_rejected is in the history with its reason; the order's row is the one its amend left.
    assert events[3] == (4, "amended", "o1", "partially_filled", D("0.7"), "self_trade_prevented")
    assert events[4] == (5, "amend_rejected", "o1", "partially_filled", D("0.7"), "post_only_would_cross")
    assert events[16] == (17, "amend_rejected", "o6", "open", D("2.5"), "quantity_not_above_filled")
    assert events[17] == (18, "amend_rejected", "ghost", "rejected", D(0), "unknown_order")
    assert int(o6.timestamp() * 1000) == T0 + 16

    dead = [fields_to_dict(f) for _, f in await redis.xrange(deadletter_key(key_prefix, "BTC-USD"))]
    assert [(json.loads(d["fields"]), d["error"]) for d in dead] == [
        (bad, "malformed: amended event of 'o-bad' has requeued=None")]


def _entries(instruments: Instruments, events: list[dict[str, str]]) -> list[Entry]:
    ref = next(r for r in stream_refs("p:", instruments) if r.kind == "events" and r.instrument.symbol == "BTC-USD")
    return [Entry(ref, f"{T0}-{n}", fields) for n, fields in enumerate(events)]


async def test_amends_in_any_order_and_any_batches_give_the_same_rows(
        instruments: Instruments, make_db: object) -> None:
    """Workers commit in any order: an amend landing after a newer fill, or an accepted event after its
    amend, ends in the rows the events give in sequence (records.py's merge and writer.py's upsert agree)."""
    decoded = [decode(e) for e in _entries(instruments, scenario().events)]
    rng = random.Random(15)
    for attempt in range(4):
        engine = create_async_engine(await make_db())  # type: ignore[operator]
        try:
            writer = Writer(engine)
            shuffled = list(decoded)
            if attempt == 1:
                shuffled.reverse()
            elif attempt > 1:
                rng.shuffle(shuffled)
            at = 0
            while at < len(shuffled):
                size = 1 if attempt == 0 else rng.choice((1, 2, 3, 7, 40))
                await writer.write(WriteSet.of(shuffled[at : at + size]))
                at += size
            assert await stored_orders(engine) == WANT_ORDERS, attempt
        finally:
            await engine.dispose()


def test_the_order_rows_of_amend_events(instruments: Instruments) -> None:
    book = scenario()
    rows = [decode(e).order for e in _entries(instruments, book.events)]
    amended = rows[1]
    assert amended is not None and (amended.price, amended.quantity, amended.queued_seq) == (D("101.00"), D(2), 2)
    decrease = rows[3]
    assert decrease is not None and (decrease.quantity, decrease.queued_seq, decrease.reason) == (
        D("1.2"), None, None)  # why it was amended is the event's: the order, resting, has no reason
    assert rows[0] is not None and rows[0].queued_seq == 1 and rows[0].self_trade_prevention == "decrement"
    assert rows[2] is not None and rows[2].queued_seq is None and rows[2].price is None
    assert rows[4] is None  # amend_rejected leaves the order's row alone


def test_a_cancelled_event_that_carries_the_order_gives_its_whole_row(instruments: Instruments) -> None:
    """match.lua's disconnect sweep cancels an order still `accepted` with a first event that carries the
    order (its new command is skipped later): the row gets every field from it, not NULLs forever."""
    fields = dict(scenario().events[0])  # o1's accepted event, with every field of the order
    fields.update(event="cancelled", status="cancelled", reason="disconnect")
    row = decode(_entries(instruments, [fields])[0]).order
    assert row is not None
    assert (row.side, row.type, row.time_in_force, row.price, row.quantity, row.status, row.reason) == (
        "buy", "limit", "GTC", D("100.00"), D(1), "cancelled", "disconnect")
    assert row.created_at is not None and row.queued_seq is None and row.self_trade_prevention == "decrement"


@pytest.mark.parametrize(("change", "error"), [
    ({"requeued": "2"}, "has requeued='2'"),
    ({"requeued": ""}, "has requeued=''"),
    ({"side": None}, "lacks the order's fields"),
    ({"quantity": None}, "lacks the order's fields"),
    ({"event": "amend"}, "event"),
])
def test_malformed_amend_events(instruments: Instruments, change: dict[str, str | None], error: str) -> None:
    fields = dict(scenario().events[1])
    for name, value in change.items():
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    with pytest.raises(MalformedEntry, match=error):
        decode(_entries(instruments, [fields])[0])


async def test_the_matchers_amends_and_stp_outcomes_give_the_rows_the_streams_stand_for(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    """The real matcher's events (amends re-queued or not, re-priced takers trading, STP cancels and
    decrements), persisted by a worker and, shuffled, by the writer alone: the rows the streams stand for."""
    for n, symbol in enumerate(sorted(instruments)):
        keys = instrument_keys(key_prefix, symbol)
        await enqueue(redis, keys, program(symbol, 400, seed=15 + n, tag="om", amends=0.2, stp=True))
        matcher = InstrumentMatcher(redis, instruments[symbol], keys, "t", 64)
        await matcher.prepare()
        await matcher.take_lease()
        await matcher.drain()
    want = await expected(redis, instruments, key_prefix)
    amended = [e for e in want.events if e[2] == "amended"]
    assert len(amended) > 40 and any(e[9] == "self_trade_prevented" for e in amended)
    async with workers(settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS), instruments):
        await wait_until_read(redis, instruments, key_prefix, 30)
    assert await stored(db) == want

    entries: list[Entry] = []
    for ref in stream_refs(key_prefix, instruments):
        entries += [Entry(ref, i.decode(), fields_to_dict(f)) for i, f in await redis.xrange(ref.key)]
    decoded = [decode(e) for e in entries]
    random.Random(16).shuffle(decoded)
    async with db.begin() as conn:
        await conn.execute(text("TRUNCATE trades, order_events, orders, candles_1m, candles_1h, client_positions_1h"))
    writer = Writer(db)
    for at in range(0, len(decoded), 25):
        await writer.write(WriteSet.of(decoded[at : at + 25]))
    assert await stored(db) == want
