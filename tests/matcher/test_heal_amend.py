"""A restored (older) Redis healed after amends it never saw (issue 15): its records take PostgreSQL's price and
quantity, the book its queue places, and the per-client index follows the records."""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.wire import decode_record, encode_record
from services.matcher.heal import heal_if_behind
from services.matcher.recovery import recover_instrument
from services.persister.records import Entry, WriteSet, decode, stream_refs
from services.persister.writer import Writer
from tests.matcher.recovery_state import capture
from tests.matcher.test_recovery_amend import SYMBOL, index, stored_history
from tests.persister.order_events import T0, Book


async def test_a_heal_takes_the_amends_postgresql_holds_beyond_the_restored_redis(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    instrument = instruments[SYMBOL]
    book = Book(SYMBOL)
    book.accept("A", "buy", "100.00", "1", client="mm-1")
    book.accept("B", "buy", "100.00", "2", client="mm-2")
    book.accept("C", "buy", "100.00", "3", client="mm-1")
    book.accept("E", "sell", "105.00", "1", client="mm-3")
    book.accept("F", "sell", "106.00", "1", client="mm-1")
    for fields in book.events:
        del fields["command_id"]  # no markers: the matcher group stays where the restored Redis has it
    # The older Redis: the book of these five orders, as a rebuild writes it (with its index).
    keys = await stored_history(redis, redis_url, key_prefix, db_url, instruments, book)
    assert await recover_instrument(redis, instrument, keys, db_url) is not None
    assert await index(redis, keys, "mm-1") == {"mm-1": [("A", T0), ("C", T0), ("F", T0)]}
    # B was placed through a cancel-on-disconnect session: only Redis knows it.
    packed = await redis.hget(keys.order_state, "B")
    assert packed is not None
    await redis.hset(keys.order_state, "B", encode_record(msgspec.structs.replace(decode_record(packed),
                                                                                  session="sess-1")))

    # PostgreSQL then stored what came after (the Redis that matched it is gone).
    known = len(book.events)
    book.amend("A", "1", quantity="4")
    book.amend("C", "0", quantity="2")
    book.amend("E", "1", price="104.00")
    book.amend("F", "1", price="107.00", quantity="3")
    book.cancel("F", "dead_man_switch")
    book.accept("D", "buy", "100.00", "1", client="mm-2")
    ref = next(r for r in stream_refs(key_prefix, instruments) if r.key == keys.events)
    later = [decode(Entry(ref, f"{T0}-{n}", {k: v for k, v in f.items() if k != "command_id"}))
             for n, f in enumerate(book.events[known:])]
    await Writer(db).write(WriteSet.of(later))

    healed = await heal_if_behind(redis, instrument, keys, db_url)
    assert healed is not None and (healed.book_orders, healed.orders_lost) == (5, 0)
    state = await capture(redis, instrument, keys)
    assert state.resting == {"buy": ["B", "C", "A", "D"], "sell": ["E"]}
    assert {i: (r.price_ticks, r.quantity_lots, r.session) for i, r in state.records.items()} == {
        "A": (10000, 400_000_000, ""), "B": (10000, 200_000_000, "sess-1"), "C": (10000, 200_000_000, ""),
        "D": (10000, 100_000_000, ""), "E": (10400, 100_000_000, "")}
    assert [(lv.price, lv.quantity) for lv in state.book.bids] == [("100.00", "9")]
    # An order final in PostgreSQL keeps its record, with the state (and amend) PostgreSQL holds.
    packed = await redis.hget(keys.order_state, "F")
    assert packed is not None
    f = decode_record(packed)
    assert (f.status, f.reason, f.price_ticks, f.quantity_lots) == ("cancelled", "dead_man_switch", 10700, 300_000_000)
    assert await index(redis, keys, "mm-1", "mm-2", "mm-3") == {
        "mm-1": [("A", T0), ("C", T0)], "mm-2": [("B", T0), ("D", T0)], "mm-3": [("E", T0)]}
