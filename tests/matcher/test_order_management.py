"""Amend, cancel-all, the deadline sweep (dead man's switch, cancel-on-disconnect) and the per-client index in
match.lua, against real Redis (docs/order-management.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.common.instruments import Instruments
from services.common.wire import EventEntry, decode_amend_outcome, decode_cancel_all_outcome
from tests.matcher.order_harness import OrderHarness, now_ms

EMPTY: dict[str, list[tuple[str, str]]] = {"buy": [], "sell": []}


@pytest.fixture
async def h(redis: Redis, key_prefix: str, instruments: Instruments) -> AsyncIterator[OrderHarness]:
    harness = OrderHarness(redis, instruments["BTC-USD"], key_prefix)
    await harness.prepare()
    yield harness
    await harness.check_book_consistency()
    await harness.check_indexes()


async def events_of(h: OrderHarness, order_id: str) -> list[EventEntry]:
    return [e for e in await h.events() if e.order_id == order_id]


def trades_of(trades: list[object]) -> list[tuple[str, str, str, str]]:
    return [(t.price, t.quantity, t.buy_order_id, t.sell_order_id) for t in trades]  # type: ignore[attr-defined]


# Amend ------------------------------------------------------------------------------------------

async def test_a_quantity_decrease_keeps_the_orders_place(h: OrderHarness) -> None:
    await h.new("buy", "100", "2", order_id="b1")
    await h.new("buy", "100", "1", order_id="b2")
    request = await h.amend("b1", quantity="1.5")
    await h.run()
    assert await h.book() == {"buy": [("100.00", "2.5")], "sell": []}
    assert await h.result(request) == {"outcome": "amended", "reason": ""}
    amended = (await events_of(h, "b1"))[-1]
    assert (amended.event, amended.status, amended.quantity, amended.remaining_quantity, amended.price,
            amended.requeued, amended.reason) == ("amended", "open", "1.5", "1.5", "100.00", "0", "")
    await h.new("sell", "100", "1", order_id="s1")
    await h.run()
    assert trades_of(await h.trades()) == [("100.00", "1", "b1", "s1")]
    assert await h.resting_order_ids("buy") == ["b1", "b2"]


async def test_a_quantity_increase_goes_to_the_back_of_the_level(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    await h.new("buy", "100", "1", order_id="b2")
    await h.amend("b1", quantity="3")
    await h.new("sell", "100", "1", order_id="s1")
    await h.run()
    assert trades_of(await h.trades()) == [("100.00", "1", "b2", "s1")]
    assert await h.book() == {"buy": [("100.00", "3")], "sell": []}
    assert (await events_of(h, "b1"))[-1].requeued == "1"


async def test_the_amended_total_counts_what_was_filled(h: OrderHarness) -> None:
    await h.new("buy", "100", "2", order_id="b1")
    await h.new("sell", "100", "0.5", order_id="s1")
    request = await h.amend("b1", quantity="1")
    await h.run()
    assert await h.result(request) == {"outcome": "amended", "reason": ""}
    assert await h.status("b1") == ("partially_filled", "0.5", "")
    assert await h.book() == {"buy": [("100.00", "0.5")], "sell": []}


async def test_a_new_price_that_crosses_trades_as_a_taker_then_rests(h: OrderHarness) -> None:
    await h.new("sell", "101", "1", order_id="s1", client="seller")
    await h.new("sell", "102", "1", order_id="s2", client="seller")
    await h.new("buy", "100", "2", order_id="b1")
    await h.run()
    await h.amend("b1", price="101")
    await h.run()
    assert trades_of(await h.trades()) == [("101.00", "1", "b1", "s1")]
    assert await h.book() == {"buy": [("101.00", "1")], "sell": [("102.00", "1")]}
    assert await h.status("b1") == ("partially_filled", "1", "")
    tail = [(e.event, e.order_id) for e in await h.events()][-3:]
    assert tail == [("amended", "b1"), ("filled", "s1"), ("partially_filled", "b1")]
    record = await h.order("b1")
    assert (record.price_ticks, record.quantity_lots) == (10100, 200_000_000)


async def test_a_new_price_can_fill_the_order_entirely(h: OrderHarness) -> None:
    await h.new("sell", "101", "1", order_id="s1", client="seller")
    await h.new("buy", "100", "1", order_id="b1")
    await h.amend("b1", price="105")
    await h.run()
    assert trades_of(await h.trades()) == [("101.00", "1", "b1", "s1")]
    assert await h.status("b1") == ("filled", "1", "")
    assert await h.book() == EMPTY


async def test_a_post_only_amend_that_would_cross_is_refused_and_changes_nothing(h: OrderHarness) -> None:
    await h.new("sell", "101", "1", order_id="s1", client="seller")
    await h.new("buy", "100", "1", order_id="b1", post_only=True)
    await h.run()
    before = await h.order("b1")
    request = await h.amend("b1", price="101", quantity="2")
    await h.run()
    assert decode_amend_outcome(await h.redis.get(h.keys.result(request)) or b"") == (
        decode_amend_outcome(b'{"outcome": "amend_rejected", "reason": "post_only_would_cross"}'))
    assert await h.order("b1") == before
    assert await h.book() == {"buy": [("100.00", "1")], "sell": [("101.00", "1")]}
    rejected = (await events_of(h, "b1"))[-1]
    assert (rejected.event, rejected.status, rejected.reason) == ("amend_rejected", "open", "post_only_would_cross")
    # Below the best ask it is a plain re-price.
    await h.amend("b1", price="100.5")
    await h.run()
    assert await h.book() == {"buy": [("100.50", "1")], "sell": [("101.00", "1")]}


@pytest.mark.parametrize(("setup", "amend", "reason"), [
    ("none", {"quantity": "1"}, "unknown_order"),
    ("filled", {"quantity": "2"}, "already_filled"),
    ("cancelled", {"price": "99"}, "already_cancelled"),
    ("partial", {"quantity": "0.5"}, "quantity_not_above_filled"),
    ("partial", {"quantity": "0.4"}, "quantity_not_above_filled"),
])
async def test_amends_that_cannot_apply_are_rejected(h: OrderHarness, setup: str, amend: dict[str, str],
                                                     reason: str) -> None:
    if setup != "none":
        await h.new("buy", "100", "1", order_id="b1")
    if setup == "filled":
        await h.new("sell", "100", "1", order_id="s1")
    elif setup == "cancelled":
        await h.cancel("b1")
    elif setup == "partial":
        await h.new("sell", "100", "0.5", order_id="s1")
    await h.run()
    before = await h.book()
    request = await h.amend("b1", **amend)
    await h.run()
    assert await h.result(request) == {"outcome": "amend_rejected", "reason": reason}
    last = (await h.events())[-1]
    assert (last.event, last.order_id, last.reason) == ("amend_rejected", "b1", reason)
    assert await h.book() == before


async def test_an_amend_that_changes_nothing_is_unchanged_without_an_event(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    await h.run()
    count = len(await h.events())
    request = await h.amend("b1", price="100", quantity="1")
    empty = await h.amend("b1")
    await h.run()
    assert await h.result(request) == await h.result(empty) == {"outcome": "unchanged", "reason": ""}
    assert len(await h.events()) == count


async def test_an_amend_of_an_order_still_accepted_applies_after_it(h: OrderHarness) -> None:
    # Commands apply in stream order: the new order is placed, then amended, in the same call.
    await h.new("buy", "100", "1", order_id="b1")
    request = await h.amend("b1", quantity="0.5")
    await h.run()
    assert await h.result(request) == {"outcome": "amended", "reason": ""}
    assert await h.book() == {"buy": [("100.00", "0.5")], "sell": []}


async def test_invalid_amend_and_cancel_all_commands_write_nothing(h: OrderHarness, redis: Redis) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    await h.run()
    count = len(await h.events())
    bad = [
        {"cmd": "amend", "order_id": "b1", "client_id": "c", "request_id": "r1", "price_ticks": "1.5",
         "quantity_lots": "", "ts": "0"},
        {"cmd": "amend", "order_id": "b1", "client_id": "c", "request_id": "r2", "price_ticks": "",
         "quantity_lots": "0", "ts": "0"},
        {"cmd": "amend", "order_id": "b1", "client_id": "c", "request_id": "", "price_ticks": "",
         "quantity_lots": "5", "ts": "0"},
        {"cmd": "cancel_all", "client_id": "client-1", "side": "both", "reason": "user", "request_id": "r3",
         "requester": "x", "ts": "0"},
        {"cmd": "cancel_all", "client_id": "client-1", "side": "", "reason": "because", "request_id": "r4",
         "requester": "x", "ts": "0"},
    ]
    for fields in bad:
        await redis.xadd(h.keys.orders, fields)  # type: ignore[arg-type]
    result = await h.matcher.step()
    assert (result.applied, result.invalid) == (5, 5)
    assert len(await h.events()) == count
    assert await h.book() == {"buy": [("100.00", "1")], "sell": []}
    for request in ("r1", "r2", "r3", "r4"):
        assert await redis.exists(h.keys.result(request)) == 0


# Cancel-all -------------------------------------------------------------------------------------

async def test_cancel_all_cancels_the_clients_resting_orders_of_one_side_or_both(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    await h.new("buy", "99", "1", order_id="b2")
    await h.new("sell", "105", "1", order_id="s1")
    await h.new("buy", "100", "1", order_id="other", client="client-2")
    await h.run()
    request = await h.cancel_all("client-1", side="buy")
    await h.run()
    assert decode_cancel_all_outcome(await h.redis.get(h.keys.result(request)) or b"").cancelled == ["b1", "b2"]
    assert await h.book() == {"buy": [("100.00", "1")], "sell": [("105.00", "1")]}
    assert await h.status("b1") == ("cancelled", "0", "user")
    assert await h.client_orders("client-1") == ["s1"]
    request = await h.cancel_all("client-1", reason="halted")
    again = await h.cancel_all("client-1")
    await h.run()
    assert await h.result(request) == {"cancelled": ["s1"]}
    assert await h.result(again) == {"cancelled": []}
    assert await h.status("s1") == ("cancelled", "0", "halted")
    assert await h.client_orders("client-1") == []
    assert await h.client_orders("client-2") == ["other"]


async def test_cancel_all_leaves_orders_accepted_after_it(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    request = await h.cancel_all("client-1")
    await h.new("buy", "101", "1", order_id="b2")
    await h.run()
    assert await h.result(request) == {"cancelled": ["b1"]}
    assert await h.book() == {"buy": [("101.00", "1")], "sell": []}


# Deadlines: the dead man's switch and cancel-on-disconnect -----------------------------------------

async def test_a_due_client_deadline_cancels_its_resting_orders_before_any_command(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    await h.new("sell", "105", "1", order_id="s1")
    await h.new("buy", "100", "1", order_id="keep", client="client-2")
    await h.run()
    await h.arm_client("client-1", now_ms() - 1)
    await h.arm_client("client-2", now_ms() + 60_000)
    # Would trade with s1, had the sweep not run first.
    await h.new("buy", "105", "1", order_id="late", client="client-2")
    await h.run()
    assert await h.status("b1") == ("cancelled", "0", "dead_man_switch")
    assert await h.status("s1") == ("cancelled", "0", "dead_man_switch")
    assert await h.trades() == []
    assert await h.book() == {"buy": [("105.00", "1"), ("100.00", "1")], "sell": []}
    assert [m.decode() for m in await h.redis.zrange(h.keys.deadlines, 0, -1)] == ["c:client-2"]


async def test_the_sweep_runs_on_a_call_without_commands(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1")
    await h.run()
    last = await h.redis.hget(h.keys.meta, "last_id")
    await h.arm_client("client-1", now_ms() - 1)
    result = await h.matcher.step()
    assert result.applied == 0 and result.last_id == last.decode()  # type: ignore[union-attr]
    assert await h.status("b1") == ("cancelled", "0", "dead_man_switch")
    assert await h.book() == EMPTY
    assert await h.redis.zcard(h.keys.deadlines) == 0
    # The event seq goes on from where the sweep left it.
    await h.new("buy", "100", "1", order_id="b2")
    await h.run()
    assert [e.seq for e in await h.events()] == ["1", "2", "3"]


async def test_a_due_session_cancels_its_live_orders_also_one_not_yet_matched(h: OrderHarness) -> None:
    await h.new("buy", "100", "1", order_id="b1", session="sess")
    await h.new("buy", "99", "1", order_id="b2")  # same client, not through the session
    await h.new("sell", "101", "1", order_id="s1", session="sess")
    await h.run()
    await h.new("sell", "100", "1", order_id="pending", session="sess")  # on the stream, not yet matched
    await h.arm_session("sess", now_ms() - 1)
    await h.run()
    assert await h.status("b1") == ("cancelled", "0", "disconnect")
    assert await h.status("s1") == ("cancelled", "0", "disconnect")
    assert await h.status("pending") == ("cancelled", "0", "disconnect")
    assert await h.trades() == []
    assert await h.book() == {"buy": [("99.00", "1")], "sell": []}
    assert await h.redis.exists(h.keys.session_orders("sess"), h.keys.deadlines) == 0
    pending = await events_of(h, "pending")
    # The order's only event carries every field: PostgreSQL learns of the order from it.
    assert [(e.event, e.reason, e.price, e.side) for e in pending] == [("cancelled", "disconnect", "100.00", "sell")]


async def test_the_sweep_applies_at_most_a_hundred_deadlines_per_call(h: OrderHarness) -> None:
    await h.redis.zadd(h.keys.deadlines, {f"c:nobody-{n}": now_ms() - 10 for n in range(150)})
    await h.matcher.step()
    assert await h.redis.zcard(h.keys.deadlines) == 50
    await h.matcher.step()
    assert await h.redis.zcard(h.keys.deadlines) == 0


# The per-client index ---------------------------------------------------------------------------

async def test_the_client_index_follows_every_way_an_order_goes_final(h: OrderHarness) -> None:
    await h.new("sell", "100", "1", order_id="s1")
    await h.new("sell", "101", "1", order_id="s2")
    await h.new("buy", "99", "1", order_id="b1")
    assert set(await h.client_orders("client-1")) == {"s1", "s2", "b1"}
    await h.run()
    await h.new("buy", "100", "0.5", order_id="t1", client="t", tif="IOC")  # fills, s1 partial
    await h.new("buy", "100", "1", order_id="t2", client="t", tif="IOC")  # remainder cancelled, s1 filled
    await h.new("buy", "98", "1", order_id="t3", client="t", post_only=True)  # rests
    await h.new("sell", "98", "1", order_id="t4", client="t", post_only=True)  # rejected
    await h.new("buy", "200", "5", order_id="t5", client="t", tif="FOK")  # not fillable
    await h.new("sell", None, "1", order_id="t6", client="t", type="market")  # fills b1
    await h.cancel("t3")
    await h.amend("s2", quantity="0.5")
    await h.run()
    assert await h.client_orders("client-1") == ["s2"]
    assert await h.client_orders("t") == []
    await h.check_indexes()
