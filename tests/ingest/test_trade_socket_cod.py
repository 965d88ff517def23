"""Cancel-on-disconnect over the order-entry socket against real Redis: the session's deadline armed before
`authenticated` and kept LEASE_MS ahead while the socket lives, the orders placed through it in its session's
set; a socket without cancel-on-disconnect leaves its orders when it closes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from redis.asyncio import Redis

from services.common.keys import deadline_of_session, instrument_keys
from services.ingest.trade_session import LEASE_MS
from services.matcher.engine import InstrumentMatcher
from tests.ingest.conftest import BROKER, limit_order
from tests.ingest.trade_client import (  # noqa: F401 (fixtures)
    TradeClient,
    TradeServer,
    TradeServerFactory,
    make_trade_server_fixture,
    trade_fixture,
)

SWEEP_S = 0.25  # MATCHER_SWEEP_MS's default


def eth(**fields: Any) -> dict[str, Any]:
    return limit_order(**{"instrument": "ETH-USD", "price": "3000.05", "quantity": "0.01", **fields})


async def sessions_of(redis: Redis, key_prefix: str) -> dict[str, dict[str, float]]:
    """Every instrument's COD deadlines: symbol -> {member: score ms}."""
    out = {}
    for symbol in ("BTC-USD", "ETH-USD"):
        members = await redis.zrange(instrument_keys(key_prefix, symbol).deadlines, 0, -1, withscores=True)
        out[symbol] = {m.decode() if isinstance(m, bytes) else m: s for m, s in members
                       if (m.decode() if isinstance(m, bytes) else m).startswith("s:")}
    return out


async def place_some(ws: TradeClient) -> list[str]:
    """A resting BTC buy, a resting ETH sell, and a batch of two BTC buys: their order ids."""
    ids = [(await ws.call("place", order=limit_order(price="100.00")))["body"]["order_id"],
           (await ws.call("place", order=eth(side="sell", price="5000.00")))["body"]["order_id"]]
    batch = await ws.call("place_batch", orders=[limit_order(price="99.00"), limit_order(price="98.00")])
    ids += [r["order"]["order_id"] for r in batch["body"]["results"]]
    return ids


async def statuses(http: httpx.AsyncClient, order_ids: list[str]) -> list[tuple[str, str]]:
    out = []
    for order_id in order_ids:
        body = (await http.get(f"/orders/{order_id}", headers=BROKER)).json()
        out.append((body["status"], body["reason"] or ""))
    return out


async def sweep_until_cancelled(matchers: list[InstrumentMatcher], http: httpx.AsyncClient, order_ids: list[str],
                                within: float) -> float:
    """Call match.lua on every instrument each SWEEP_S, as the idle matcher worker does, until every order is
    cancelled; the seconds it took. Fails after `within` s."""
    started = time.monotonic()
    while True:
        for matcher in matchers:
            await matcher.step()
        if all(status == ("cancelled", "disconnect") for status in await statuses(http, order_ids)):
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not cancelled within {within} s: {await statuses(http, order_ids)}")
        await asyncio.sleep(SWEEP_S)


async def test_the_session_is_armed_before_authenticated_and_refreshed(trade: TradeServer, redis: Redis,
                                                                       key_prefix: str) -> None:
    ws = await trade.open()
    before_ms = time.time_ns() // 1_000_000
    assert await ws.auth("demo-key-A", cancel_on_disconnect=True) == {
        "type": "authenticated", "role": "trader", "client_id": "client-A", "cancel_on_disconnect": True}
    deadlines = await sessions_of(redis, key_prefix)
    (member,) = deadlines["BTC-USD"]
    assert set(deadlines["ETH-USD"]) == {member}
    session = member.removeprefix("s:")
    assert member == deadline_of_session(session)
    first = deadlines["BTC-USD"][member]
    assert before_ms + LEASE_MS <= first <= time.time() * 1000 + LEASE_MS
    order_ids = await place_some(ws)
    for symbol, ids in (("BTC-USD", {order_ids[0], *order_ids[2:]}), ("ETH-USD", {order_ids[1]})):
        members = await redis.smembers(instrument_keys(key_prefix, symbol).session_orders(session))
        assert {m.decode() for m in members} == ids
    await asyncio.sleep(1.3)
    refreshed = (await sessions_of(redis, key_prefix))["BTC-USD"][member]
    assert refreshed > first


async def test_a_socket_without_cancel_on_disconnect_leaves_its_orders(trade: TradeServer, redis: Redis,
                                                                      key_prefix: str) -> None:
    engine = trade.engine
    ws = await trade.open(additional_headers={"Authorization": "Bearer demo-key-A"})
    assert (await ws.other())["cancel_on_disconnect"] is False
    order_ids = await place_some(ws)
    await ws.ws.close()
    for _ in range(6):
        await engine.drain()
        await asyncio.sleep(SWEEP_S)
    assert set(await statuses(trade.http, order_ids)) == {("open", "")}
    assert await sessions_of(redis, key_prefix) == {"BTC-USD": {}, "ETH-USD": {}}
