"""Every event names the command that produced it (`command_id`), and PostgreSQL stores that marker."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.persister.records import Entry, MalformedEntry, decode, stream_refs
from tests.conftest import TWO_INSTRUMENTS
from tests.matcher.harness import Harness
from tests.persister.runner import workers
from tests.persister.workload import settings_for, wait_until_read


async def test_the_command_marker_goes_from_the_event_to_its_column(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    harness = Harness(redis, instruments["BTC-USD"], key_prefix)
    await harness.prepare()
    await harness.new("sell", "100", "1", order_id="s1")
    await harness.new("buy", "100", "2", order_id="b1")  # trades with s1, then rests
    await harness.cancel("nobody")
    await harness.cancel("b1")
    assert await harness.run() == 4
    commands = [entry_id.decode() for entry_id, _ in await redis.xrange(harness.keys.orders)]
    events = [(e.seq, e.event, e.order_id, e.command_id) for e in await harness.events()]
    assert events == [
        ("1", "accepted", "s1", commands[0]),
        ("2", "accepted", "b1", commands[1]),
        ("3", "filled", "s1", commands[1]),
        ("4", "partially_filled", "b1", commands[1]),
        ("5", "cancel_rejected", "nobody", commands[2]),
        ("6", "cancelled", "b1", commands[3]),
    ]

    async with workers(settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS), instruments):
        await wait_until_read(redis, instruments, key_prefix, 20)
    async with db.connect() as conn:
        rows = (await conn.execute(text("SELECT seq, command_id FROM order_events ORDER BY seq"))).all()
    assert [tuple(r) for r in rows] == [(int(seq), command) for seq, _, _, command in events]


def _event_entry(instruments: Instruments, **fields: str) -> Entry:
    ref = next(r for r in stream_refs("p:", instruments) if r.kind == "events" and r.instrument.symbol == "BTC-USD")
    base = {"event": "cancel_rejected", "seq": "1", "instrument": "BTC-USD", "order_id": "x", "client_id": "c",
            "status": "rejected", "filled_quantity": "0", "remaining_quantity": "0", "filled_quote": "0",
            "reason": "unknown_order", "ts": "1767225600000"}
    return Entry(ref, "1-0", {**base, **fields})


def test_an_event_without_a_marker_stores_null_and_a_bad_marker_is_malformed(instruments: Instruments) -> None:
    decoded = decode(_event_entry(instruments))  # written before the field existed
    assert decoded.event is not None and decoded.event.command_id is None
    decoded = decode(_event_entry(instruments, command_id="1767225600000-3"))
    assert decoded.event is not None and decoded.event.command_id == "1767225600000-3"
    for bad in ("1767225600000", "x-1", "1-2-3", "99999999999999999999-0", "\u0661-\u0662"):
        with pytest.raises(MalformedEntry, match="command_id"):
            decode(_event_entry(instruments, command_id=bad))
