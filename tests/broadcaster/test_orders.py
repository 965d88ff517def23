"""The private orders channel: a trader sees only its own client's events; broker and admin see all."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.broadcaster.conftest import Message, Stream, StreamFactory
from tests.matcher.harness import Harness

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def is_last(order_id: str, event: str) -> Callable[[Message], bool]:
    return lambda m: m.get("order_id") == order_id and m.get("event") == event


async def authed(open_stream: StreamFactory, api_key: str) -> Stream:
    stream = await open_stream()
    assert (await stream.auth(api_key))["type"] == "authenticated"
    await stream.subscribe(["orders"], ["BTC-USD"])
    return stream


async def test_traders_see_only_their_own_events_and_the_broker_sees_all(
        open_stream: StreamFactory, btc: Harness) -> None:
    a = await authed(open_stream, "demo-key-A")
    b = await authed(open_stream, "demo-key-B")
    broker = await authed(open_stream, "demo-broker")
    admin = await authed(open_stream, "demo-admin")

    a1 = await btc.new("sell", "100.00", "1", client="client-A")
    b1 = await btc.new("buy", "100.00", "0.4", client="client-B")  # fills 0.4 of a1
    b2 = await btc.new("buy", "90.00", "2", client="client-B")
    await btc.cancel(b2, client="client-B")
    a2 = await btc.new("buy", "95.00", "1", client="client-A")
    await btc.run()
    events = await btc.events()

    a_seen = await a.collect(is_last(a2, "accepted"))
    b_seen = await b.collect(is_last(b2, "cancelled"))
    broker_seen = await broker.collect(is_last(a2, "accepted"))
    admin_seen = await admin.collect(is_last(a2, "accepted"))
    assert await a.quiet(0.2) == [] and await b.quiet(0.2) == []

    def summary(messages: list[Message]) -> list[tuple[str, str, str]]:
        return [(m["client_id"], m["order_id"], m["event"]) for m in messages]

    assert summary(a_seen) == [("client-A", a1, "accepted"), ("client-A", a1, "partially_filled"),
                               ("client-A", a2, "accepted")]
    assert summary(b_seen) == [("client-B", b1, "accepted"), ("client-B", b1, "filled"),
                               ("client-B", b2, "accepted"), ("client-B", b2, "cancelled")]
    everyone = [(e.client_id, e.order_id, e.event) for e in events]
    assert summary(broker_seen) == everyone
    assert summary(admin_seen) == everyone
    assert [m["seq"] for m in broker_seen] == [int(e.seq) for e in events]

    accepted = a_seen[0]
    assert ISO_MS.match(accepted.pop("ts")) and ISO_MS.match(accepted.pop("created_at"))
    assert accepted == {
        "type": "order", "event": "accepted", "seq": 1, "instrument": "BTC-USD", "order_id": a1,
        "client_id": "client-A", "status": "open", "filled_quantity": "0", "remaining_quantity": "1",
        "filled_quote": "0", "reason": None, "side": "sell", "order_type": "limit", "time_in_force": "GTC",
        "post_only": False, "price": "100.00", "quantity": "1"}
    fill = a_seen[1]
    assert ISO_MS.match(fill.pop("ts"))
    assert fill == {"type": "order", "event": "partially_filled", "seq": fill["seq"], "instrument": "BTC-USD",
                    "order_id": a1, "client_id": "client-A", "status": "partially_filled",
                    "filled_quantity": "0.4", "remaining_quantity": "0.6", "filled_quote": "40", "reason": None}
    assert b_seen[-1]["reason"] == "user"


async def test_orders_need_a_valid_key(open_stream: StreamFactory, btc: Harness) -> None:
    anonymous = await open_stream()
    await anonymous.send({"op": "subscribe", "channels": ["orders"], "instruments": ["BTC-USD"]})
    assert (await anonymous.expect("error"))["message"].startswith("the orders channel needs")

    wrong = await open_stream()
    assert await wrong.auth("not-a-key") == {"type": "error", "message": "invalid API key"}
    await wrong.send({"op": "subscribe", "channels": ["orders", "trades"]})
    await wrong.expect("error")  # nothing subscribed, not even trades

    await btc.new("sell", "100.00", "1", client="client-A")
    await btc.new("buy", "100.00", "1", client="client-B")
    await btc.run()
    assert await anonymous.quiet() == []
    assert await wrong.quiet() == []


async def test_authorization_header_and_reauth(open_stream: StreamFactory, btc: Harness) -> None:
    stream = await open_stream(additional_headers={"Authorization": "Bearer demo-key-B"})
    await stream.subscribe(["orders"], ["BTC-USD"])
    assert await stream.auth("demo-admin") == {"type": "error",
                                               "message": "this connection is already authenticated"}
    await btc.new("sell", "100.00", "1", client="client-A")
    b1 = await btc.new("buy", "100.00", "1", client="client-B")
    await btc.run()
    seen = await stream.collect(is_last(b1, "filled"))
    assert {m["client_id"] for m in seen} == {"client-B"}
