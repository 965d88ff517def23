"""A restored (older) Redis healed (issue 16): its halts hash becomes exactly the halts PostgreSQL holds, so a halt
lifted since the backup is not back in force and a halt set since it is."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.halts import now_ms, store_halt
from services.common.instruments import Instruments
from services.common.keys import HALT_INSTRUMENT, halt_of_client
from services.common.wire import text
from services.matcher.heal import heal_if_behind
from services.matcher.recovery import recover_instrument
from services.persister.records import Entry, WriteSet, decode, stream_refs
from services.persister.writer import Writer
from tests.matcher.test_recovery_amend import SYMBOL, stored_history
from tests.persister.order_events import T0, Book


async def test_a_heal_leaves_the_halts_postgresql_holds(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    instrument = instruments[SYMBOL]
    book = Book(SYMBOL)
    book.accept("A", "buy", "100.00", "1", client="mm-1")
    for fields in book.events:
        del fields["command_id"]
    keys = await stored_history(redis, redis_url, key_prefix, db_url, instruments, book)
    assert await recover_instrument(redis, instrument, keys, db_url) is not None
    # The backup holds a halt of mm-old, lifted since (PostgreSQL has no row for it).
    await redis.hset(keys.halts, halt_of_client("mm-old"), "1")
    # Since the backup: mm-new and the instrument were halted, and more was traded.
    at = now_ms()
    await store_halt(db, "client", "mm-new", "admin", at)
    await store_halt(db, "instrument", SYMBOL, "admin", at)
    await store_halt(db, "instrument", "OTHER-SYMBOL", "admin", at)  # another instrument's: not this hash's
    known = len(book.events)
    book.accept("B", "sell", "101.00", "1", client="mm-2")
    ref = next(r for r in stream_refs(key_prefix, instruments) if r.key == keys.events)
    later = [decode(Entry(ref, f"{T0}-{n}", {k: v for k, v in f.items() if k != "command_id"}))
             for n, f in enumerate(book.events[known:])]
    await Writer(db).write(WriteSet.of(later))

    assert await heal_if_behind(redis, instrument, keys, db_url) is not None
    halts = {text(k): text(v) for k, v in (await redis.hgetall(keys.halts)).items()}
    assert halts == {halt_of_client("mm-new"): str(at), HALT_INSTRUMENT: str(at)}
