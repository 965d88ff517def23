"""Property: over random command sequences, match.lua agrees with the Python reference model."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.instruments import Instruments
from services.common.redis_conn import connect
from tests.matcher.harness import Harness
from tests.matcher.reference import RefBook, RefOrder

new_order = st.fixed_dictionaries({
    "kind": st.just("new"),
    "side": st.sampled_from(["buy", "sell"]),
    "type": st.sampled_from(["limit", "limit", "limit", "market"]),
    "tif": st.sampled_from(["GTC", "GTC", "IOC", "FOK"]),
    "post_only": st.booleans(),
    "price": st.integers(min_value=9998, max_value=10002),  # ticks: a narrow band so orders cross often
    "qty": st.integers(min_value=1, max_value=12),  # lots
    "run_now": st.booleans(),
})
cancel_order = st.fixed_dictionaries({
    "kind": st.just("cancel"),
    "target": st.integers(min_value=0, max_value=60),
    "run_now": st.booleans(),
})
commands = st.lists(st.one_of(new_order, new_order, cancel_order), min_size=1, max_size=60)


async def _check(redis_url: str, instruments: Instruments, program: list[dict[str, Any]], batch: int) -> None:
    redis = connect(redis_url)
    prefix = f"test-prop-{uuid.uuid4().hex[:10]}:"
    instrument = instruments["BTC-USD"]
    harness = Harness(redis, instrument, prefix, batch_size=batch)
    model = RefBook()
    placed: list[str] = []
    try:
        await harness.prepare()
        for n, cmd in enumerate(program):
            if cmd["kind"] == "new":
                order_id = f"o{n}"
                market = cmd["type"] == "market"
                tif = "IOC" if market else cmd["tif"]
                post_only = cmd["post_only"] and not market
                price = None if market else instrument.price_text(cmd["price"])
                await harness.new(cmd["side"], price, instrument.quantity_text(cmd["qty"]), order_id=order_id,
                                  type=cmd["type"], tif=tif, post_only=post_only)
                model.new(RefOrder(order_id, cmd["side"], cmd["type"], tif, post_only,
                                   0 if market else cmd["price"], cmd["qty"]))
                placed.append(order_id)
            elif placed:
                target = placed[cmd["target"] % len(placed)]
                await harness.cancel(target)
                model.cancel(target)
            if cmd["run_now"]:
                await harness.run()
        await harness.run()

        trades = [(instrument.price_ticks_of(t.price), instrument.quantity_lots_of(t.quantity),
                   t.buy_order_id, t.sell_order_id) for t in await harness.trades()]
        assert trades == model.trades
        for side in ("buy", "sell"):
            levels = [(instrument.price_ticks_of(p), instrument.quantity_lots_of(q))
                      for p, q in await harness.levels(side)]
            assert levels == model.levels(side), side
        for order_id, expected in model.orders.items():
            record = await harness.order(order_id)
            assert (record.status, record.filled_lots, record.reason) == (
                expected.status, expected.filled, expected.reason), order_id
        await harness.check_book_consistency()
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@settings(max_examples=int(os.environ.get("MATCHER_PROPERTY_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(program=commands, batch=st.sampled_from([1, 3, 64]))
def test_lua_matches_reference_model(redis_url: str, instruments: Instruments,
                                     program: list[dict[str, Any]], batch: int) -> None:
    asyncio.run(_check(redis_url, instruments, program, batch))
