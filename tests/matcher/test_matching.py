"""The matching rules as a table of scenarios, each checked against real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common.instruments import Instruments
from tests.matcher.harness import Harness

# A step: ("new", order_id, side, price, quantity, {options}) or ("cancel", order_id)
Step = tuple[Any, ...]


@dataclass
class Scenario:
    name: str
    steps: list[Step]
    trades: list[tuple[str, str, str, str]]  # price, quantity, buy order, sell order
    book: dict[str, list[tuple[str, str]]]
    statuses: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # id -> status, filled, reason


def new(order_id: str, side: str, price: str | None, qty: str, **options: Any) -> Step:
    return ("new", order_id, side, price, qty, options)


def cancel(order_id: str) -> Step:
    return ("cancel", order_id)


EMPTY: dict[str, list[tuple[str, str]]] = {"buy": [], "sell": []}

SCENARIOS = [
    Scenario(
        "price priority: the better price fills first, whatever its arrival",
        [new("s1", "sell", "101", "1"), new("s2", "sell", "100", "1"), new("b1", "buy", "101", "1")],
        [("100.00", "1", "b1", "s2")],
        {"buy": [], "sell": [("101.00", "1")]},
        {"s2": ("filled", "1", ""), "s1": ("open", "0", ""), "b1": ("filled", "1", "")},
    ),
    Scenario(
        "time priority at one level",
        [new("s1", "sell", "100", "1"), new("s2", "sell", "100", "1"), new("b1", "buy", "100", "1.5")],
        [("100.00", "1", "b1", "s1"), ("100.00", "0.5", "b1", "s2")],
        {"buy": [], "sell": [("100.00", "0.5")]},
        {"s1": ("filled", "1", ""), "s2": ("partially_filled", "0.5", ""), "b1": ("filled", "1.5", "")},
    ),
    Scenario(
        "the maker's price is the trade price",
        [new("b1", "buy", "105", "2"), new("s1", "sell", "99", "1")],
        [("105.00", "1", "b1", "s1")],
        {"buy": [("105.00", "1")], "sell": []},
        {"b1": ("partially_filled", "1", ""), "s1": ("filled", "1", "")},
    ),
    Scenario(
        "partial fills on both sides, the taker's remainder rests",
        [new("s1", "sell", "100", "0.3"), new("b1", "buy", "100", "0.5"), new("s2", "sell", "100", "0.1")],
        [("100.00", "0.3", "b1", "s1"), ("100.00", "0.1", "b1", "s2")],
        {"buy": [("100.00", "0.1")], "sell": []},
        {"b1": ("partially_filled", "0.4", ""), "s1": ("filled", "0.3", ""), "s2": ("filled", "0.1", "")},
    ),
    Scenario(
        "a limit buy walks the book up to its price and no further",
        [new("s1", "sell", "100", "1"), new("s2", "sell", "101", "1"), new("s3", "sell", "102", "1"),
         new("b1", "buy", "101", "3")],
        [("100.00", "1", "b1", "s1"), ("101.00", "1", "b1", "s2")],
        {"buy": [("101.00", "1")], "sell": [("102.00", "1")]},
        {"b1": ("partially_filled", "2", "")},
    ),
    Scenario(
        "a market order exhausting the book cancels its remainder",
        [new("b1", "buy", "99", "1"), new("b2", "buy", "98", "2"), new("m1", "sell", None, "5", type="market")],
        [("99.00", "1", "b1", "m1"), ("98.00", "2", "b2", "m1")],
        EMPTY,
        {"m1": ("cancelled", "3", "market_remainder"), "b1": ("filled", "1", ""), "b2": ("filled", "2", "")},
    ),
    Scenario(
        "a market order on an empty book is cancelled unfilled",
        [new("m1", "buy", None, "1", type="market")],
        [],
        EMPTY,
        {"m1": ("cancelled", "0", "market_remainder")},
    ),
    Scenario(
        "IOC remainder is cancelled, never rests",
        [new("s1", "sell", "100", "1"), new("b1", "buy", "100", "3", tif="IOC")],
        [("100.00", "1", "b1", "s1")],
        EMPTY,
        {"b1": ("cancelled", "1", "ioc_remainder")},
    ),
    Scenario(
        "FOK that cannot fill entirely trades nothing",
        [new("s1", "sell", "100", "1"), new("s2", "sell", "102", "5"), new("b1", "buy", "101", "2", tif="FOK")],
        [],
        {"buy": [], "sell": [("100.00", "1"), ("102.00", "5")]},
        {"b1": ("cancelled", "0", "fok_not_fillable"), "s1": ("open", "0", "")},
    ),
    Scenario(
        "FOK that can fill across levels fills entirely",
        [new("s1", "sell", "100", "1"), new("s2", "sell", "101", "1.5"), new("b1", "buy", "101", "2", tif="FOK")],
        [("100.00", "1", "b1", "s1"), ("101.00", "1", "b1", "s2")],
        {"buy": [], "sell": [("101.00", "0.5")]},
        {"b1": ("filled", "2", "")},
    ),
    Scenario(
        "post-only that would cross is rejected and leaves the book alone",
        [new("s1", "sell", "100", "1"), new("b1", "buy", "100", "1", post_only=True)],
        [],
        {"buy": [], "sell": [("100.00", "1")]},
        {"b1": ("rejected", "0", "post_only_would_cross"), "s1": ("open", "0", "")},
    ),
    Scenario(
        "post-only that does not cross rests",
        [new("s1", "sell", "100", "1"), new("b1", "buy", "99.99", "1", post_only=True)],
        [],
        {"buy": [("99.99", "1")], "sell": [("100.00", "1")]},
        {"b1": ("open", "0", "")},
    ),
    Scenario(
        "cancel an open order removes it and its empty level",
        [new("b1", "buy", "100", "1"), new("b2", "buy", "99", "1"), cancel("b1")],
        [],
        {"buy": [("99.00", "1")], "sell": []},
        {"b1": ("cancelled", "0", "user")},
    ),
    Scenario(
        "cancel a partly filled order keeps what it traded",
        [new("b1", "buy", "100", "1"), new("s1", "sell", "100", "0.25"), cancel("b1")],
        [("100.00", "0.25", "b1", "s1")],
        EMPTY,
        {"b1": ("cancelled", "0.25", "user")},
    ),
    Scenario(
        "cancel a filled order changes nothing",
        [new("b1", "buy", "100", "1"), new("s1", "sell", "100", "1"), cancel("b1")],
        [("100.00", "1", "b1", "s1")],
        EMPTY,
        {"b1": ("filled", "1", "")},
    ),
    Scenario(
        "a level shared by several orders loses only the cancelled one's quantity",
        [new("b1", "buy", "100", "1"), new("b2", "buy", "100", "2"), cancel("b1"), new("s1", "sell", "100", "0.5")],
        [("100.00", "0.5", "b2", "s1")],
        {"buy": [("100.00", "1.5")], "sell": []},
        {"b1": ("cancelled", "0", "user"), "b2": ("partially_filled", "0.5", "")},
    ),
    Scenario(
        "a self-trade is allowed",
        [new("b1", "buy", "100", "1", client="same"), new("s1", "sell", "100", "1", client="same")],
        [("100.00", "1", "b1", "s1")],
        EMPTY,
    ),
    Scenario(
        "the tiniest lot and the largest quantity trade exactly",
        [new("s1", "sell", "9999999.99", "1000"), new("b1", "buy", "10000000", "0.00000001"),
         new("b2", "buy", "9999999.99", "999.99999999")],
        [("9999999.99", "0.00000001", "b1", "s1"), ("9999999.99", "999.99999999", "b2", "s1")],
        EMPTY,
        {"s1": ("filled", "1000", "")},
    ),
]


@pytest.fixture
async def harness(redis: Redis, key_prefix: str, instruments: Instruments) -> AsyncIterator[Harness]:
    h = Harness(redis, instruments["BTC-USD"], key_prefix)
    await h.prepare()
    yield h


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("batched", [False, True], ids=["one-call-per-command", "one-call-for-all"])
async def test_scenario(harness: Harness, scenario: Scenario, batched: bool) -> None:
    for step in scenario.steps:
        if step[0] == "new":
            _, order_id, side, price, qty, options = step
            await harness.new(side, price, qty, order_id=order_id, **options)
        else:
            await harness.cancel(step[1])
        if not batched:
            await harness.run()
    await harness.run()

    trades = await harness.trades()
    assert [(t.price, t.quantity, t.buy_order_id, t.sell_order_id) for t in trades] == scenario.trades
    assert [t.seq for t in trades] == [str(n) for n in range(1, len(trades) + 1)]
    assert await harness.book() == scenario.book
    for order_id, expected in scenario.statuses.items():
        assert await harness.status(order_id) == expected, order_id
    await harness.check_book_consistency()
    events = await harness.events()
    assert [e.seq for e in events] == [str(n) for n in range(1, len(events) + 1)]


async def test_cancel_unknown_order_is_rejected(harness: Harness) -> None:
    await harness.cancel("nope")
    await harness.run()
    [event] = await harness.events()
    assert (event.event, event.order_id, event.reason) == ("cancel_rejected", "nope", "unknown_order")


async def test_cancel_of_final_order_reports_why(harness: Harness) -> None:
    await harness.new("buy", "100", "1", order_id="b1")
    await harness.new("sell", "100", "1", order_id="s1")
    await harness.cancel("b1")
    await harness.run()
    last = (await harness.events())[-1]
    assert (last.event, last.order_id, last.status, last.reason) == (
        "cancel_rejected", "b1", "filled", "already_filled")


async def test_events_describe_the_order_and_its_fills(harness: Harness) -> None:
    await harness.new("sell", "100.10", "0.3", order_id="s1", client="seller")
    await harness.new("sell", "100.20", "0.3", order_id="s2", client="seller")
    await harness.new("buy", "101", "0.5", order_id="b1", client="buyer")
    await harness.run()
    events = [(e.event, e.order_id, e.status, e.filled_quantity, e.remaining_quantity, e.filled_quote)
              for e in await harness.events()]
    assert events == [
        ("accepted", "s1", "open", "0", "0.3", "0"),
        ("accepted", "s2", "open", "0", "0.3", "0"),
        ("accepted", "b1", "open", "0", "0.5", "0"),
        ("filled", "s1", "filled", "0.3", "0", "30.03"),
        ("partially_filled", "s2", "partially_filled", "0.2", "0.1", "20.04"),
        ("filled", "b1", "filled", "0.5", "0", "50.07"),
    ]
    accepted = (await harness.events())[2]
    assert (accepted.side, accepted.type, accepted.time_in_force, accepted.price, accepted.quantity) == (
        "buy", "limit", "GTC", "101.00", "0.5")
    record = await harness.order("b1")
    assert harness.instrument.average_price_text(record.notional, record.filled_lots) == "100.14"
    trade = (await harness.trades())[0]
    assert (trade.trade_id, trade.taker_side, trade.buyer_client_id, trade.seller_client_id) == (
        "BTC-USD-1", "buy", "buyer", "seller")


async def test_book_changes_stream_carries_level_totals_with_gapless_seq(harness: Harness, redis: Redis) -> None:
    await harness.new("buy", "100", "1", order_id="b1")
    await harness.run()
    await harness.new("buy", "100", "2", order_id="b2")
    await harness.new("sell", "101", "1", order_id="s1")
    await harness.run()
    await harness.cancel("b1")
    await harness.run()
    entries = [(f[b"seq"], f[b"changes"]) for _, f in await redis.xrange(harness.keys.book)]
    assert entries == [
        (b"1", b'[["buy","100.00","1"]]'),
        (b"2", b'[["buy","100.00","3"],["sell","101.00","1"]]'),
        (b"3", b'[["buy","100.00","2"]]'),
    ]
    assert await redis.hget(harness.keys.meta, "book_seq") == b"3"


async def test_invalid_command_is_refused_without_touching_the_book(harness: Harness, redis: Redis) -> None:
    await redis.xadd(harness.keys.orders, {"cmd": "new", "order_id": "bad", "client_id": "c", "side": "up",
                                           "type": "limit", "time_in_force": "GTC", "price_ticks": "1",
                                           "quantity_lots": "1", "created_at": "0"})
    await redis.xadd(harness.keys.orders, {"cmd": "explode"})
    result = await harness.matcher.step()
    assert (result.applied, result.invalid) == (2, 2)
    assert await harness.book() == EMPTY
