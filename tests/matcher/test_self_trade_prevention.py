"""Self-trade prevention in match.lua: the incoming order's mode decides, before each fill with an order of the
same client (docs/order-management.md), against real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.common.instruments import Instruments
from tests.matcher.order_harness import OrderHarness


@pytest.fixture
async def h(redis: Redis, key_prefix: str, instruments: Instruments) -> AsyncIterator[OrderHarness]:
    harness = OrderHarness(redis, instruments["BTC-USD"], key_prefix)
    await harness.prepare()
    yield harness
    await harness.check_book_consistency()
    await harness.check_indexes()


async def trades(h: OrderHarness) -> list[tuple[str, str, str, str]]:
    return [(t.price, t.quantity, t.buy_order_id, t.sell_order_id) for t in await h.trades()]


async def own_then_other(h: OrderHarness, own: str = "1", other: str = "1") -> None:
    """Asks at 100: first one of client A's (own), then one of client B's."""
    await h.new("sell", "100", own, order_id="own", client="A")
    await h.new("sell", "100", other, order_id="other", client="B")


async def test_none_lets_a_client_trade_with_itself(h: OrderHarness) -> None:
    await own_then_other(h)
    await h.new("buy", "100", "1", order_id="t", client="A")
    await h.run()
    assert await trades(h) == [("100.00", "1", "t", "own")]


async def test_cancel_taker_cancels_the_incoming_order_before_any_fill(h: OrderHarness) -> None:
    await own_then_other(h)
    await h.new("buy", "100", "2", order_id="t", client="A", stp="cancel_taker")
    await h.run()
    assert await trades(h) == []
    assert await h.status("t") == ("cancelled", "0", "self_trade_prevented")
    assert await h.status("own") == ("open", "0", "")
    assert await h.book() == {"buy": [], "sell": [("100.00", "2")]}
    events = [(e.event, e.order_id, e.reason) for e in await h.events()][-2:]
    assert events == [("accepted", "t", ""), ("cancelled", "t", "self_trade_prevented")]


async def test_cancel_taker_after_fills_with_others_cancels_the_rest(h: OrderHarness) -> None:
    await h.new("sell", "100", "1", order_id="other", client="B")
    await h.new("sell", "100", "1", order_id="own", client="A")
    await h.new("buy", "100", "3", order_id="t", client="A", stp="cancel_taker")
    await h.run()
    assert await trades(h) == [("100.00", "1", "t", "other")]
    assert await h.status("t") == ("cancelled", "1", "self_trade_prevented")
    assert await h.book() == {"buy": [], "sell": [("100.00", "1")]}


async def test_cancel_maker_cancels_the_resting_order_and_goes_on(h: OrderHarness) -> None:
    await own_then_other(h)
    await h.new("buy", "100", "2", order_id="t", client="A", stp="cancel_maker")
    await h.run()
    assert await trades(h) == [("100.00", "1", "t", "other")]
    assert await h.status("own") == ("cancelled", "0", "self_trade_prevented")
    assert await h.status("t") == ("partially_filled", "1", "")
    assert await h.book() == {"buy": [("100.00", "1")], "sell": []}


async def test_cancel_both_cancels_both(h: OrderHarness) -> None:
    await own_then_other(h)
    await h.new("buy", "100", "2", order_id="t", client="A", stp="cancel_both")
    await h.run()
    assert await trades(h) == []
    assert await h.status("own") == ("cancelled", "0", "self_trade_prevented")
    assert await h.status("t") == ("cancelled", "0", "self_trade_prevented")
    assert await h.book() == {"buy": [], "sell": [("100.00", "1")]}


async def test_decrement_a_smaller_maker_is_cancelled_and_the_taker_reduced(h: OrderHarness) -> None:
    await own_then_other(h, own="1", other="2")
    await h.new("buy", "100", "3", order_id="t", client="A", stp="decrement")
    await h.run()
    assert await trades(h) == [("100.00", "2", "t", "other")]
    assert await h.status("own") == ("cancelled", "0", "self_trade_prevented")
    record = await h.order("t")
    assert (record.status, record.quantity_lots, record.filled_lots, record.reason) == (
        "filled", 200_000_000, 200_000_000, "")
    amended = [e for e in await h.events() if e.order_id == "t" and e.event == "amended"]
    assert [(e.quantity, e.remaining_quantity, e.reason, e.requeued) for e in amended] == [
        ("2", "2", "self_trade_prevented", "0")]
    assert await h.book() == {"buy": [], "sell": []}


async def test_decrement_a_smaller_taker_is_cancelled_and_the_maker_reduced_in_place(h: OrderHarness) -> None:
    await h.new("sell", "100", "3", order_id="own", client="A")
    await h.new("sell", "100", "1", order_id="other", client="B")
    await h.new("buy", "100", "1", order_id="t", client="A", stp="decrement")
    await h.run()
    assert await trades(h) == []
    assert await h.status("t") == ("cancelled", "0", "self_trade_prevented")
    record = await h.order("own")
    assert (record.status, record.quantity_lots, record.reason) == ("open", 200_000_000, "")
    assert await h.book() == {"buy": [], "sell": [("100.00", "3")]}
    # It kept its place: the next buyer meets it first.
    await h.new("buy", "100", "1", order_id="b", client="C")
    await h.run()
    assert await trades(h) == [("100.00", "1", "b", "own")]
    amended = [e for e in await h.events() if e.event == "amended"]
    assert [(e.order_id, e.quantity, e.reason, e.requeued) for e in amended] == [
        ("own", "2", "self_trade_prevented", "0")]


async def test_decrement_with_equal_remainders_cancels_both(h: OrderHarness) -> None:
    await own_then_other(h, own="2")
    await h.new("sell", "99", "0.5", order_id="first", client="B")
    await h.new("buy", "100", "2.5", order_id="t", client="A", stp="decrement")
    await h.run()
    assert await trades(h) == [("99.00", "0.5", "t", "first")]
    assert await h.status("own") == ("cancelled", "0", "self_trade_prevented")
    assert await h.status("t") == ("cancelled", "0.5", "self_trade_prevented")
    assert await h.book() == {"buy": [], "sell": [("100.00", "1")]}


@pytest.mark.parametrize("stp", ["cancel_taker", "cancel_maker", "cancel_both", "decrement"])
async def test_fok_counts_only_liquidity_it_may_trade_with(h: OrderHarness, stp: str) -> None:
    # Under decrement its own 2 would not be smaller than the 2 it needs: it would be cancelled at its own.
    await own_then_other(h, own="2")
    await h.new("buy", "100", "2", order_id="fok", client="A", tif="FOK", stp=stp)
    await h.run()
    assert await trades(h) == []
    assert await h.status("fok") == ("cancelled", "0", "fok_not_fillable")
    assert await h.book() == {"buy": [], "sell": [("100.00", "3")]}  # nothing was cancelled for it


async def test_fok_never_fills_in_part_when_its_own_order_sits_between_others(h: OrderHarness) -> None:
    # Others' liquidity (2) would cover it, but the match would stop at its own order after one fill.
    await h.new("sell", "100", "1", order_id="o1", client="B")
    await h.new("sell", "100", "1", order_id="own", client="A")
    await h.new("sell", "100", "1", order_id="o2", client="B")
    await h.new("buy", "100", "2", order_id="fok", client="A", tif="FOK", stp="cancel_taker")
    await h.run()
    assert await trades(h) == []
    assert await h.status("fok") == ("cancelled", "0", "fok_not_fillable")


async def test_fok_without_prevention_counts_its_own_orders(h: OrderHarness) -> None:
    await own_then_other(h)
    await h.new("buy", "100", "2", order_id="fok", client="A", tif="FOK")
    await h.run()
    assert await h.status("fok") == ("filled", "2", "")


@pytest.mark.parametrize(("stp", "status", "cancelled_own"), [
    ("cancel_maker", ("filled", "1", ""), True),
    ("decrement", ("filled", "1", ""), True),  # own 1 < 2: cancelled, the FOK reduced to 1, then filled
    ("cancel_taker", ("cancelled", "0", "fok_not_fillable"), False),  # it would stop at its own order first
    ("cancel_both", ("cancelled", "0", "fok_not_fillable"), False),
])
async def test_fok_meeting_its_own_order_first(h: OrderHarness, stp: str, status: tuple[str, str, str],
                                               cancelled_own: bool) -> None:
    await own_then_other(h, own="1", other="1")
    quantity = "2" if stp == "decrement" else "1"
    await h.new("buy", "100", quantity, order_id="fok", client="A", tif="FOK", stp=stp)
    await h.run()
    assert await h.status("fok") == status
    assert (await h.status("own"))[0] == ("cancelled" if cancelled_own else "open")


async def test_fok_with_others_ahead_of_its_own_order_fills(h: OrderHarness) -> None:
    await h.new("sell", "100", "1", order_id="other", client="B")
    await h.new("sell", "100", "1", order_id="own", client="A")
    await h.new("buy", "100", "1", order_id="fok", client="A", tif="FOK", stp="cancel_taker")
    await h.run()
    assert await h.status("fok") == ("filled", "1", "")
    assert await h.status("own") == ("open", "0", "")


async def test_a_market_order_under_cancel_maker_sweeps_past_its_own(h: OrderHarness) -> None:
    await own_then_other(h)
    await h.new("buy", None, "5", order_id="m", client="A", type="market", stp="cancel_maker")
    await h.run()
    assert await trades(h) == [("100.00", "1", "m", "other")]
    assert await h.status("m") == ("cancelled", "1", "market_remainder")
    assert await h.status("own") == ("cancelled", "0", "self_trade_prevented")


async def test_an_amended_order_trading_as_taker_applies_its_own_mode(h: OrderHarness) -> None:
    await h.new("sell", "101", "1", order_id="own", client="A")
    await h.new("buy", "100", "1", order_id="b", client="A", stp="cancel_maker")
    await h.run()
    await h.amend("b", price="101", client="A")
    await h.run()
    assert await trades(h) == []
    assert await h.status("own") == ("cancelled", "0", "self_trade_prevented")
    assert await h.book() == {"buy": [("101.00", "1")], "sell": []}


async def test_the_accepted_event_carries_the_mode(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b", client="A", stp="cancel_both")
    await h.run()
    [accepted] = await h.events()
    assert (accepted.event, accepted.self_trade_prevention) == ("accepted", "cancel_both")
    assert (await h.order("b")).self_trade_prevention == "cancel_both"
    await h.new("buy", "100", "1", order_id="plain", client="A")
    await h.run()
    # none is the default: the event leaves the field out.
    assert (await h.events())[-1].self_trade_prevention is None
