"""Property: over random command sequences, match.lua agrees with the Python reference model: new orders under
every self-trade prevention mode, cancels, amends and cancel-all, from two clients, with the risk limits off or
on at widths that bite at these prices (the price band, market protection, the open-order cap); the book, the
trades, every order's state, each command's outcome, each client's index of live orders and open-order count, and
the band's reference price."""

from __future__ import annotations

import asyncio
import os
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.instruments import Instrument, Instruments, InstrumentSpec
from services.common.redis_conn import connect
from tests.matcher.order_harness import OrderHarness
from tests.matcher.reference import RefBook, RefOrder

CLIENTS = ["client-1", "client-2"]
STP_MODES = ["none", "none", "cancel_taker", "cancel_maker", "cancel_both", "decrement"]

new_order = st.fixed_dictionaries({
    "kind": st.just("new"),
    "side": st.sampled_from(["buy", "sell"]),
    "type": st.sampled_from(["limit", "limit", "limit", "market"]),
    "tif": st.sampled_from(["GTC", "GTC", "IOC", "FOK"]),
    "post_only": st.booleans(),
    # Ticks in a narrow band, the middle first (hypothesis tries first values most): orders cross often.
    "price": st.sampled_from([10000, 9999, 10001, 9998, 10002]),
    "qty": st.integers(min_value=1, max_value=6),  # lots: small, so equal remainders (STP decrement) are common
    "client": st.sampled_from(CLIENTS),
    "stp": st.sampled_from(STP_MODES),
    "run_now": st.booleans(),
})
# A cancel or amend mostly targets an order resting in the model at that point (the model applies each command
# as it is enqueued, in stream order, as match.lua will), sometimes any order placed so far.
LIVE_TARGET = st.sampled_from([True, True, True, False])
cancel_order = st.fixed_dictionaries({
    "kind": st.just("cancel"),
    "target": st.integers(min_value=0, max_value=60),
    "live": LIVE_TARGET,
    "run_now": st.booleans(),
})
amend_order = st.fixed_dictionaries({
    "kind": st.just("amend"),
    "target": st.integers(min_value=0, max_value=60),
    "live": LIVE_TARGET,
    "price": st.none() | st.sampled_from([10000, 9999, 10001, 9998, 10002, 9997, 10003]),
    "qty": st.none() | st.integers(min_value=1, max_value=8),
    "run_now": st.booleans(),
})
cancel_all = st.fixed_dictionaries({
    "kind": st.just("cancel_all"),
    "client": st.sampled_from(CLIENTS),
    "side": st.sampled_from(["", "buy", "sell"]),
    "run_now": st.booleans(),
})
# Weighted by kind (st.one_of would weigh each distinct strategy alike): mostly new orders, cancel-all rarely
# (each one empties a client's side of the book).
KINDS = {"new": new_order, "cancel": cancel_order, "amend": amend_order, "cancel_all": cancel_all}
command = st.sampled_from(["new"] * 8 + ["amend"] * 3 + ["cancel"] * 2 + ["cancel_all"]).flatmap(KINDS.__getitem__)
commands = st.lists(command, min_size=20, max_size=80)
# (price band, market protection, both in hundredths of a percent; open-order cap), 0 = off. Around 10,000 ticks a
# hundredth of a percent is one tick: a band of 1-3 ticks, a protection of 0-1 tick beyond the best price, and a
# cap of 1-3 orders per client bite often. All off (as before issue 16) half the time.
LIMITS = st.one_of(st.just((0, 0, 0)), st.tuples(
    st.sampled_from([0, 1, 2, 3]), st.sampled_from([0, 1, 2]), st.sampled_from([0, 1, 2, 3])))


def instrument_with(band_bp: int, protection_bp: int, max_open: int) -> Instrument:
    """BTC-USD (tick 0.01, lot 1e-8) with these risk limits."""
    return Instrument(InstrumentSpec(
        symbol="BTC-USD", base="BTC", quote="USD", tick="0.01", lot="0.00000001", min_quantity="0.00000001",
        max_quantity="1000", max_price="10000000", price_band_pct=str(Decimal(band_bp).scaleb(-2)),
        market_protection_pct=str(Decimal(protection_bp).scaleb(-2)), max_open_orders=max_open,
        max_order_notional=0))


async def _check(redis_url: str, limits: tuple[int, int, int], program: list[dict[str, Any]], batch: int) -> None:
    redis = connect(redis_url)
    prefix = f"test-prop-{uuid.uuid4().hex[:10]}:"
    instrument = instrument_with(*limits)
    harness = OrderHarness(redis, instrument, prefix, batch_size=batch)
    model = RefBook(band_bp=limits[0], protection_bp=limits[1], max_open=limits[2])
    placed: list[str] = []
    # Outcomes are applied in stream order: the model's are known at once, the Lua ones after the runs.
    outcomes: dict[str, Any] = {}
    try:
        await harness.prepare()
        for n, cmd in enumerate(program):
            if cmd["kind"] == "new":
                order_id = f"o{n}"
                market = cmd["type"] == "market"
                tif = "IOC" if market else cmd["tif"]
                post_only = cmd["post_only"] and not market
                ticks = cmd["price"]
                price = None if market else instrument.price_text(ticks)
                await harness.new(cmd["side"], price, instrument.quantity_text(cmd["qty"]), order_id=order_id,
                                  type=cmd["type"], tif=tif, post_only=post_only, client=cmd["client"],
                                  stp=cmd["stp"])
                model.new(RefOrder(order_id, cmd["side"], cmd["type"], tif, post_only,
                                   0 if market else ticks, cmd["qty"], client=cmd["client"], stp=cmd["stp"]))
                placed.append(order_id)
            elif cmd["kind"] == "cancel_all":
                request = await harness.cancel_all(cmd["client"], side=cmd["side"])
                outcomes[request] = {"cancelled": set(model.cancel_all(cmd["client"], cmd["side"]))}
            elif placed:
                candidates = [o.order_id for o in model.resting] if cmd["live"] and model.resting else placed
                target = candidates[cmd["target"] % len(candidates)]
                if cmd["kind"] == "cancel":
                    await harness.cancel(target)
                    model.cancel(target)
                else:
                    price = None if cmd["price"] is None else instrument.price_text(cmd["price"])
                    quantity = None if cmd["qty"] is None else instrument.quantity_text(cmd["qty"])
                    request = await harness.amend(target, price=price, quantity=quantity)
                    outcome, reason = model.amend(target, cmd["price"], cmd["qty"])
                    outcomes[request] = {"outcome": outcome, "reason": reason}
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
            assert (record.status, record.filled_lots, record.reason, record.quantity_lots, record.price_ticks) == (
                expected.status, expected.filled, expected.reason, expected.qty, expected.price), order_id
        for request, expected in outcomes.items():
            got = await harness.result(request)
            if "cancelled" in got:
                got = {"cancelled": set(got["cancelled"])}
            assert got == expected, request
        for client in CLIENTS:
            assert set(await harness.client_orders(client)) == model.live(client), client
        assert await harness.open_counts() == model.open_counts()
        reference = await redis.hget(harness.keys.meta, "ref_ticks")
        assert (None if reference is None else int(reference)) == model.reference
        await harness.check_book_consistency()
        await harness.check_indexes()
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@settings(max_examples=int(os.environ.get("MATCHER_PROPERTY_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(program=commands, batch=st.sampled_from([1, 3, 64]), limits=LIMITS)
def test_lua_matches_reference_model(redis_url: str, program: list[dict[str, Any]], batch: int,
                                     limits: tuple[int, int, int]) -> None:
    asyncio.run(_check(redis_url, limits, program, batch))


# Time priority after amends: a book built without crossing, amended, then swept by two market orders, so the
# trades list every resting order in its queue place (random mixes rarely leave two orders on one level).
resting = st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(0, 2), st.integers(1, 6),
                             st.sampled_from(CLIENTS)), min_size=2, max_size=15)
amends = st.lists(st.tuples(st.integers(0, 14), st.none() | st.integers(0, 2), st.none() | st.integers(1, 8)),
                  min_size=1, max_size=10)


async def _check_priority(redis_url: str, instruments: Instruments, orders: list[tuple[str, int, int, str]],
                          changes: list[tuple[int, int | None, int | None]]) -> None:
    redis = connect(redis_url)
    prefix = f"test-prio-{uuid.uuid4().hex[:10]}:"
    instrument = instruments["BTC-USD"]
    harness = OrderHarness(redis, instrument, prefix)
    model = RefBook()
    try:
        await harness.prepare()

        def ticks(side: str, level: int) -> int:  # bids 9998-10000, asks 10001-10003: nothing crosses
            return 9998 + level if side == "buy" else 10001 + level

        for n, (side, level, qty, client) in enumerate(orders):
            await harness.new(side, instrument.price_text(ticks(side, level)), instrument.quantity_text(qty),
                              order_id=f"o{n}", client=client)
            model.new(RefOrder(f"o{n}", side, "limit", "GTC", False, ticks(side, level), qty, client=client))
        for target, level, qty in changes:
            order_id = f"o{target % len(orders)}"
            side = model.orders[order_id].side
            price = None if level is None else ticks(side, level)
            await harness.amend(order_id, price=None if price is None else instrument.price_text(price),
                                quantity=None if qty is None else instrument.quantity_text(qty))
            model.amend(order_id, price, qty)
        for n, side in enumerate(("buy", "sell")):
            await harness.new(side, None, "1000", order_id=f"sweep-{n}", type="market", client="client-3")
            model.new(RefOrder(f"sweep-{n}", side, "market", "IOC", False, 0, 1000 * 10**8, client="client-3"))
        await harness.run()
        trades = [(instrument.price_ticks_of(t.price), instrument.quantity_lots_of(t.quantity),
                   t.buy_order_id, t.sell_order_id) for t in await harness.trades()]
        assert trades == model.trades
        await harness.check_indexes()
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@settings(max_examples=int(os.environ.get("MATCHER_PROPERTY_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(orders=resting, changes=amends)
def test_amends_keep_or_lose_time_priority_as_the_model_does(redis_url: str, instruments: Instruments,
                                                             orders: list[tuple[str, int, int, str]],
                                                             changes: list[tuple[int, int | None, int | None]]) -> None:
    asyncio.run(_check_priority(redis_url, instruments, orders, changes))
