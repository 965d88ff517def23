"""The matcher's risk limits (issue 16), in match.lua against real Redis: the price band around the last trade
price, market protection around the best opposite price at arrival, and the per-client open-order cap with its
count kept exact. tests/data/risk_limits.toml: BTC-USD band 10%, protection 5%, at most 3 resting orders per
client; ETH-USD (tick 0.05) band 1.5%, protection 0.25%, at most 2."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.common.instruments import Instruments
from services.common.wire import EventEntry
from services.matcher.metrics import MatcherMetrics
from tests.matcher.order_harness import OrderHarness, now_ms


async def _harness(redis: Redis, instruments: Instruments, symbol: str, prefix: str) -> OrderHarness:
    harness = OrderHarness(redis, instruments[symbol], prefix)
    await harness.prepare()
    return harness


@pytest.fixture
async def h(redis: Redis, key_prefix: str, risk_instruments: Instruments) -> AsyncIterator[OrderHarness]:
    harness = await _harness(redis, risk_instruments, "BTC-USD", key_prefix)
    yield harness
    await harness.check_book_consistency()  # the open-order counts equal the resting orders, client by client
    await harness.check_indexes()


@pytest.fixture
async def eth(redis: Redis, key_prefix: str, risk_instruments: Instruments) -> AsyncIterator[OrderHarness]:
    harness = await _harness(redis, risk_instruments, "ETH-USD", key_prefix)
    yield harness
    await harness.check_book_consistency()
    await harness.check_indexes()


async def trade_at(h: OrderHarness, price: str, quantity: str = "0.01") -> None:
    """One trade at `price` between two clients of their own: the reference price is then `price`."""
    await h.new("sell", price, quantity, client="ref-seller")
    await h.new("buy", price, quantity, client="ref-buyer")
    await h.run()
    assert (await h.trades())[-1].price == price


async def reference(h: OrderHarness) -> str | None:
    ticks = await h.redis.hget(h.keys.meta, "ref_ticks")
    return None if ticks is None else h.instrument.price_text(int(ticks))


async def last_event(h: OrderHarness, order_id: str) -> EventEntry:
    return [e for e in await h.events() if e.order_id == order_id][-1]


# The price band -------------------------------------------------------------------------------------

async def test_no_band_before_the_first_trade(h: OrderHarness) -> None:
    await h.new("buy", "1.00", "1", order_id="far-bid", client="a")
    await h.new("sell", "9999999.99", "1", order_id="far-ask", client="b")
    await h.run()
    assert await reference(h) is None
    assert (await h.status("far-bid"))[0] == (await h.status("far-ask"))[0] == "open"
    await trade_at(h, "100.00")
    assert await reference(h) == "100.00"
    await h.new("buy", "1.00", "1", order_id="far-bid-2", client="a")
    await h.run()
    assert await h.status("far-bid-2") == ("rejected", "0", "price_band")


@pytest.mark.parametrize(("side", "edge", "beyond"), [
    ("buy", "90.00", "89.99"),  # below the reference
    ("sell", "110.00", "110.01"),  # above it
    ("buy", "110.00", "110.01"),  # a buy above it (it would cross nothing: rejected anyway)
    ("sell", "90.00", "89.99"),
])
async def test_the_band_edge_is_allowed_and_one_tick_beyond_is_rejected(
        h: OrderHarness, side: str, edge: str, beyond: str) -> None:
    await trade_at(h, "100.00")
    await h.new(side, edge, "1", order_id="edge", client="a")
    await h.new(side, beyond, "1", order_id="beyond", client="b")
    await h.new(side, beyond, "1", order_id="beyond-ioc", client="b", tif="IOC")
    await h.run()
    assert (await h.status("edge"))[0] == "open"
    assert await h.status("beyond") == ("rejected", "0", "price_band")
    assert await h.status("beyond-ioc") == ("rejected", "0", "price_band")
    rejected = await last_event(h, "beyond")
    assert (rejected.event, rejected.status, rejected.reason, rejected.price, rejected.side, rejected.quantity) == (
        "rejected", "rejected", "price_band", beyond, side, "1")
    assert await h.client_orders("b") == []
    assert len(await h.trades()) == 1


async def test_the_reference_moves_with_every_trade_of_one_call(h: OrderHarness) -> None:
    """Commands applied in one call see the reference their predecessors left, as if applied one by one."""
    await h.new("sell", "100.00", "0.01", client="s")
    await h.new("buy", "100.00", "0.01", client="b")
    await h.new("sell", "105.00", "0.01", client="s")
    await h.new("buy", "105.00", "0.01", client="b")
    await h.new("buy", "94.50", "1", order_id="edge", client="c")  # exactly 10% below 105.00
    await h.new("buy", "94.49", "1", order_id="beyond", client="c")
    assert await h.run() == 6  # one call (batch 64)
    assert [t.price for t in await h.trades()] == ["100.00", "105.00"]
    assert await reference(h) == "105.00"
    assert (await h.status("edge"))[0] == "open"
    assert await h.status("beyond") == ("rejected", "0", "price_band")


async def test_a_market_order_trade_moves_the_reference(h: OrderHarness) -> None:
    await trade_at(h, "100.00")
    await h.new("sell", "104.00", "1", client="s")
    await h.new("buy", None, "1", type="market", client="m")
    await h.run()
    assert await reference(h) == "104.00"


async def test_decimal_percentages_at_the_edge(eth: OrderHarness) -> None:
    """ETH-USD: 1.5% of 2000.00 is 30.00; a tick is 0.05."""
    await trade_at(eth, "2000.00", "0.01")
    for order_id, side, price, client in (("up-edge", "sell", "2030.00", "a"), ("up-beyond", "sell", "2030.05", "a"),
                                          ("down-edge", "buy", "1970.00", "b"), ("down-beyond", "buy", "1969.95", "b")):
        await eth.new(side, price, "0.01", order_id=order_id, client=client)
    await eth.run()
    assert (await eth.status("up-edge"))[0] == (await eth.status("down-edge"))[0] == "open"
    assert await eth.status("up-beyond") == await eth.status("down-beyond") == ("rejected", "0", "price_band")


async def test_an_amend_to_a_price_beyond_the_band_is_rejected_and_the_order_unchanged(h: OrderHarness) -> None:
    await trade_at(h, "100.00")
    await h.new("buy", "95.00", "1", order_id="b1", client="a")
    await h.new("buy", "95.00", "1", order_id="b2", client="b")
    await h.new("sell", "105.00", "1", order_id="s1", client="c")
    await h.run()
    rejected_buy = await h.amend("b1", price="89.99", quantity="2")
    rejected_sell = await h.amend("s1", price="110.01")
    await h.run()
    assert await h.result(rejected_buy) == await h.result(rejected_sell) == {
        "outcome": "amend_rejected", "reason": "price_band"}
    record = await h.order("b1")
    assert (record.price_ticks, record.quantity_lots, record.status, record.reason) == (9500, 100_000_000, "open", "")
    assert await h.resting_order_ids("buy") == ["b1", "b2"]  # its place kept
    event = await last_event(h, "b1")
    assert (event.event, event.status, event.reason, event.remaining_quantity) == (
        "amend_rejected", "open", "price_band", "1")
    # At the edge it is amended.
    edge_buy, edge_sell = await h.amend("b1", price="90.00"), await h.amend("s1", price="110.00")
    await h.run()
    assert await h.result(edge_buy) == await h.result(edge_sell) == {"outcome": "amended", "reason": ""}
    assert await h.book() == {"buy": [("95.00", "1"), ("90.00", "1")], "sell": [("110.00", "1")]}


async def test_an_amend_that_keeps_the_price_is_not_banded(h: OrderHarness) -> None:
    """The reference moved away from a resting order: its quantity can still change; a new price is banded
    around the new reference (109.00: 98.10 is the edge)."""
    await trade_at(h, "100.00")
    await h.new("buy", "90.00", "1", order_id="b1", client="a")
    await h.run()
    await trade_at(h, "109.00")
    more, less = await h.amend("b1", quantity="2"), await h.amend("b1", quantity="1.5")
    beyond, edge = await h.amend("b1", price="98.09"), await h.amend("b1", price="98.10")
    await h.run()
    assert [(await h.result(r))["outcome"] for r in (more, less, beyond, edge)] == [
        "amended", "amended", "amend_rejected", "amended"]
    assert (await h.result(beyond))["reason"] == "price_band"
    assert await h.book() == {"buy": [("98.10", "1.5")], "sell": []}


async def test_limits_off_nothing_is_banded(redis: Redis, key_prefix: str, instruments: Instruments) -> None:
    h = await _harness(redis, instruments, "BTC-USD", key_prefix)
    await trade_at(h, "100.00")
    await h.new("buy", "0.01", "1", order_id="low")
    await h.new("sell", "9999999.99", "1", order_id="high")
    for n in range(5):
        await h.new("buy", f"1.0{n}", "1", client="many")
    await h.run()
    assert (await h.status("low"))[0] == (await h.status("high"))[0] == "open"
    assert (await h.open_counts())["many"] == 5
    await h.check_book_consistency()


# Market protection ----------------------------------------------------------------------------------

async def test_a_market_buy_trades_up_to_its_protection_and_the_rest_is_cancelled(h: OrderHarness) -> None:
    """Best ask 100.00: 5% is 105.00, which is inside; 105.01 is not."""
    for n, price in enumerate(("100.00", "104.00", "105.00", "105.01")):
        await h.new("sell", price, "1", order_id=f"s{n}", client=f"maker-{n}")
    await h.new("buy", None, "10", type="market", order_id="m", client="taker")
    await h.run()
    assert [t.price for t in await h.trades()] == ["100.00", "104.00", "105.00"]
    assert await h.status("m") == ("cancelled", "3", "market_protection")
    cancelled = await last_event(h, "m")
    assert (cancelled.event, cancelled.reason, cancelled.filled_quantity, cancelled.remaining_quantity) == (
        "cancelled", "market_protection", "3", "7")
    assert await h.book() == {"buy": [], "sell": [("105.01", "1")]}


async def test_a_market_sell_trades_down_to_its_protection(h: OrderHarness) -> None:
    for n, price in enumerate(("100.00", "95.00", "94.99")):
        await h.new("buy", price, "1", order_id=f"b{n}", client=f"maker-{n}")
    await h.new("sell", None, "5", type="market", order_id="m", client="taker")
    await h.run()
    assert [t.price for t in await h.trades()] == ["100.00", "95.00"]
    assert await h.status("m") == ("cancelled", "2", "market_protection")
    assert await h.book() == {"buy": [("94.99", "1")], "sell": []}


async def test_protection_is_measured_from_the_best_price_at_arrival_not_the_last_trade(h: OrderHarness) -> None:
    """Last trade 100.00, best ask 104.00: the limit is 104.00 + 5.20 = 109.20."""
    await trade_at(h, "100.00")
    for n, price in enumerate(("104.00", "109.20", "109.21")):
        await h.new("sell", price, "1", order_id=f"s{n}", client=f"maker-{n}")
    await h.new("buy", None, "5", type="market", order_id="m", client="taker")
    await h.run()
    assert [t.price for t in await h.trades()][1:] == ["104.00", "109.20"]
    assert await h.status("m") == ("cancelled", "2", "market_protection")


@pytest.mark.parametrize(("best", "inside", "outside"), [
    ("2000.00", "2005.00", "2005.05"),  # 0.25% of 2000.00 is 5.00 exactly
    ("1999.95", "2004.90", "2004.95"),  # 0.25% of 1999.95 is 4.999875: 2004.95 is 5.00 away, beyond it
])
async def test_protection_with_a_decimal_percentage_is_exact(eth: OrderHarness, best: str, inside: str,
                                                            outside: str) -> None:
    for n, price in enumerate((best, inside, outside)):
        await eth.new("sell", price, "0.01", order_id=f"s{n}", client=f"maker-{n}")
    await eth.new("buy", None, "1", type="market", order_id="m", client="taker")
    await eth.run()
    assert [t.price for t in await eth.trades()] == [best, inside]
    assert await eth.status("m") == ("cancelled", "0.02", "market_protection")


async def test_a_market_order_within_its_protection_fills_or_exhausts_the_book(h: OrderHarness) -> None:
    await h.new("sell", "100.00", "1", client="s1")
    await h.new("sell", "101.00", "1", client="s2")
    await h.new("buy", None, "1.5", type="market", order_id="filled", client="t")
    await h.new("buy", None, "5", type="market", order_id="exhausted", client="t")
    await h.new("buy", None, "1", type="market", order_id="empty", client="t")
    await h.run()
    assert await h.status("filled") == ("filled", "1.5", "")
    assert await h.status("exhausted") == ("cancelled", "0.5", "market_remainder")
    assert await h.status("empty") == ("cancelled", "0", "market_remainder")


# The open-order cap -----------------------------------------------------------------------------------

async def test_the_fourth_resting_order_is_rejected_before_matching(h: OrderHarness) -> None:
    for price in ("99.00", "98.00", "97.00"):
        await h.new("buy", price, "1", client="c")
    await h.new("sell", "101.00", "1", order_id="ask", client="d")
    await h.new("buy", "96.00", "1", order_id="fourth", client="c")
    # It would trade in full, but the cap is checked before matching.
    await h.new("buy", "101.00", "1", order_id="crossing", client="c")
    await h.run()
    assert await h.open_counts() == {"c": 3, "d": 1}
    for order_id in ("fourth", "crossing"):
        assert await h.status(order_id) == ("rejected", "0", "max_open_orders")
        event = await last_event(h, order_id)
        assert (event.event, event.status, event.reason) == ("rejected", "rejected", "max_open_orders")
    assert await h.trades() == []
    assert len(await h.client_orders("c")) == 3


async def test_orders_that_cannot_rest_are_not_capped(h: OrderHarness) -> None:
    for price in ("99.00", "98.00", "97.00"):
        await h.new("buy", price, "1", client="c")
    await h.new("sell", "100.00", "3", client="d")
    await h.new("buy", "100.00", "1", order_id="ioc", client="c", tif="IOC")
    await h.new("buy", "100.00", "1", order_id="fok", client="c", tif="FOK")
    await h.new("buy", None, "0.5", order_id="market", client="c", type="market")
    await h.run()
    assert await h.status("ioc") == await h.status("fok") == ("filled", "1", "")
    assert await h.status("market") == ("filled", "0.5", "")
    assert await h.open_counts() == {"c": 3, "d": 1}


async def test_the_count_follows_partial_fills_fills_cancels_and_resting_remainders(h: OrderHarness) -> None:
    await h.new("buy", "99.00", "1", order_id="b1", client="c")
    await h.new("buy", "98.00", "1", order_id="b2", client="c")
    await h.new("buy", "97.00", "1", order_id="b3", client="c")
    await h.new("sell", "99.00", "0.5", client="d")  # b1 partially filled: still resting
    await h.new("buy", "96.00", "1", order_id="r1", client="c")
    await h.run()
    assert await h.status("b1") == ("partially_filled", "0.5", "")
    assert await h.status("r1") == ("rejected", "0", "max_open_orders")
    assert await h.open_counts() == {"c": 3}

    await h.new("sell", "99.00", "0.5", client="d")  # b1 filled: 2 left
    await h.new("buy", "96.00", "1", order_id="b4", client="c")  # the third again
    await h.cancel("b2", client="c")  # 2
    await h.new("sell", "100.00", "0.25", client="e")
    await h.new("buy", "100.00", "1", order_id="b5", client="c")  # trades 0.25, the rest rests: 3
    await h.new("buy", "95.00", "1", order_id="r2", client="c")
    await h.run()
    assert await h.status("b4") == ("open", "0", "")
    assert await h.status("b5") == ("partially_filled", "0.25", "")
    assert await h.status("r2") == ("rejected", "0", "max_open_orders")
    assert await h.open_counts() == {"c": 3}


async def test_an_order_admitted_at_the_cap_minus_one_that_fills_is_not_counted(h: OrderHarness) -> None:
    await h.new("buy", "99.00", "1", client="c")
    await h.new("buy", "98.00", "1", client="c")
    await h.new("sell", "100.00", "1", client="d")
    await h.new("buy", "100.00", "1", order_id="fills", client="c")
    await h.new("buy", "97.00", "1", order_id="third", client="c")
    await h.run()
    assert await h.status("fills") == ("filled", "1", "")
    assert (await h.status("third"))[0] == "open"
    assert await h.open_counts() == {"c": 3}


async def test_amends_keep_the_count_and_a_fill_on_amend_releases_it(h: OrderHarness) -> None:
    for n, price in enumerate(("99.00", "98.00", "97.00")):
        await h.new("buy", price, "1", order_id=f"b{n}", client="c")
    await h.new("sell", "101.00", "1", order_id="ask", client="d")
    await h.run()
    await h.amend("b0", quantity="3")  # to the back: still resting
    await h.amend("b1", price="96.00")  # re-queued at a new price
    await h.amend("b2", quantity="0.5")  # keeps its place
    await h.new("buy", "95.00", "1", order_id="r1", client="c")
    await h.run()
    assert await h.open_counts() == {"c": 3, "d": 1}
    assert await h.status("r1") == ("rejected", "0", "max_open_orders")
    await h.amend("b2", price="101.00", quantity="1")  # crosses and fills: no longer resting
    await h.run()
    assert await h.status("b2") == ("filled", "1", "")
    assert await h.open_counts() == {"c": 2}
    await h.new("buy", "95.00", "1", order_id="b3", client="c")
    await h.run()
    assert (await h.status("b3"))[0] == "open"


async def test_cancel_all_self_trade_prevention_and_the_sweeps_release_the_count(h: OrderHarness) -> None:
    for n, price in enumerate(("99.00", "98.00", "97.00")):
        await h.new("buy", price, "1", order_id=f"b{n}", client="c")
    await h.new("sell", "105.00", "1", order_id="s0", client="c")  # c is at its cap on... 4? rejected
    await h.run()
    assert await h.status("s0") == ("rejected", "0", "max_open_orders")  # the cap counts both sides
    await h.cancel_all("c", side="buy")
    await h.run()
    assert await h.open_counts() == {}

    # Self-trade prevention: cancel_maker cancels c's own resting order, the incoming one rests.
    await h.new("sell", "100.00", "1", order_id="s1", client="c")
    await h.new("buy", "100.00", "1", order_id="b3", client="c", stp="cancel_maker")
    # decrement: the smaller (resting s2) is cancelled, the incoming reduced, and it rests.
    await h.new("sell", "101.00", "0.5", order_id="s2", client="c")
    await h.new("buy", "101.00", "1", order_id="b4", client="c", stp="decrement")
    await h.run()
    assert await h.status("s1") == ("cancelled", "0", "self_trade_prevented")
    assert await h.status("s2") == ("cancelled", "0", "self_trade_prevented")
    assert await h.open_counts() == {"c": 2}

    # The dead man's switch, then a cancel-on-disconnect session.
    await h.arm_client("c", now_ms() - 1)
    await h.run()
    assert await h.open_counts() == {}
    await h.new("buy", "90.00", "1", client="c", session="sess-1")
    await h.new("buy", "91.00", "1", client="c")
    await h.run()
    await h.arm_session("sess-1", now_ms() - 1)
    await h.run()
    assert await h.open_counts() == {"c": 1}


# Metrics ------------------------------------------------------------------------------------------

async def test_the_matcher_counts_its_risk_rejections(h: OrderHarness) -> None:
    await trade_at(h, "100.00")
    await h.new("sell", "100.00", "1", client="s")
    await h.new("sell", "106.00", "1", client="s")
    for price in ("99.00", "98.00", "97.00"):
        await h.new("buy", price, "0.1", order_id=f"b{price}", client="c")
    await h.new("buy", "96.00", "1", client="c")  # max_open_orders
    await h.new("buy", "80.00", "1", client="e")  # price_band
    await h.new("buy", "100.00", "1", client="e", post_only=True)  # post_only_would_cross
    await h.new("buy", None, "5", type="market", client="m")  # market_protection (106.00 is out)
    await h.amend("b99.00", price="50.00")  # amend_rejected price_band
    metrics = MatcherMetrics()
    while (result := await h.matcher.step()).applied:
        metrics.record("BTC-USD", result, 0.001)

    def sample(name: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"instrument": "BTC-USD", "reason": reason})

    assert sample("risk_rejections_total", "price_band") == 2
    assert sample("risk_rejections_total", "max_open_orders") == 1
    assert sample("risk_rejections_total", "market_protection") == 1
    assert sample("orders_rejected_total", "price_band") == 1
    assert sample("orders_rejected_total", "max_open_orders") == 1
    assert sample("orders_rejected_total", "post_only_would_cross") == 1
