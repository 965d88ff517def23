"""POST /orders/cancel-all: the checks, one `cancel_all` command per instrument, and the answers once the
matchers applied them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest
from starlette.datastructures import Headers

from services.common.auth import Principal
from services.common.wire import fields_to_dict
from services.ingest.cancel_all import cancel_all, decode_cancel_all
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine, EngineFactory


async def _cancel_all(engine: Engine, body: Any, headers: dict[str, str] = KEY_A, *,
                      match: bool = True) -> httpx.Response:
    """POST while (optionally) the matchers keep applying commands, as the real ones would."""
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    task = asyncio.create_task(engine.client.post("/orders/cancel-all", content=content, headers=headers))
    while match and not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    return await task


async def _commands(engine: Engine, symbol: str) -> list[dict[str, str]]:
    entries = await engine.redis.xrange(engine.keys[symbol].orders)
    return [f for f in (fields_to_dict(fields) for _, fields in entries) if f["cmd"] == "cancel_all"]


async def _status(engine: Engine, order_id: str) -> tuple[str, str | None]:
    view = (await engine.get(order_id, ADMIN)).json()
    return view["status"], view["reason"]


async def test_one_command_per_instrument_and_202_without_a_matcher(make_engine: EngineFactory) -> None:
    engine = await make_engine(cancel_wait_ms=30)
    response = await _cancel_all(engine, {"client_id": "client-A"}, match=False)
    assert response.status_code == 202
    assert response.json() == {"cancelled": [], "pending_instruments": ["BTC-USD", "ETH-USD"]}
    (btc,) = await _commands(engine, "BTC-USD")
    (eth,) = await _commands(engine, "ETH-USD")
    assert {k: v for k, v in btc.items() if k not in ("ts", "request_id")} == {
        "cmd": "cancel_all", "client_id": "client-A", "side": "", "reason": "user", "requester": "client-A"}
    assert btc["request_id"] != eth["request_id"] and btc["ts"].isdigit()

    response = await _cancel_all(engine, {"client_id": "client-B", "instrument": "ETH-USD", "side": "sell"}, BROKER,
                                 match=False)
    assert response.json() == {"cancelled": [], "pending_instruments": ["ETH-USD"]}
    assert len(await _commands(engine, "BTC-USD")) == 1
    last = (await _commands(engine, "ETH-USD"))[-1]
    assert (last["client_id"], last["side"], last["requester"]) == ("client-B", "sell", "broker")


@pytest.mark.parametrize("body, field", [
    ({}, "client_id"), ({"client_id": "a b"}, "client_id"), ({"client_id": "client-A", "side": "both"}, "side"),
    ({"client_id": "client-A", "instrument": "DOGE-USD"}, "instrument"),
    ({"client_id": "client-A", "reason": "halted"}, "reason"),
])
async def test_422_names_the_field(engine: Engine, body: dict[str, Any], field: str) -> None:
    response = await _cancel_all(engine, body, match=False)
    assert (response.status_code, response.json()["details"][0]["field"]) == (422, field)


async def test_400_401_403_and_413(engine: Engine) -> None:
    assert (await _cancel_all(engine, b"[", match=False)).status_code == 400
    assert (await _cancel_all(engine, {"client_id": "client-A"}, {}, match=False)).status_code == 401
    response = await _cancel_all(engine, {"client_id": "client-A"}, KEY_B, match=False)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    too_big = b'{"client_id": "client-A", "x": "' + b"x" * 17000 + b'"}'
    assert (await _cancel_all(engine, too_big, match=False)).status_code == 413
    for symbol in ("BTC-USD", "ETH-USD"):
        assert await _commands(engine, symbol) == []


async def test_cancels_every_resting_order_of_the_client_on_every_instrument(engine: Engine) -> None:
    a1 = (await engine.place(KEY_A, price="100.00"))["order_id"]
    a2 = (await engine.place(KEY_A, side="sell", price="200.00"))["order_id"]
    a3 = (await engine.place(KEY_A, instrument="ETH-USD", price="3000.05", quantity="1"))["order_id"]
    b1 = (await engine.place(client_id="client-B", price="100.00"))["order_id"]
    await engine.drain()
    # Accepted before the cancel-all and not matched yet: cancelled too.
    a4 = (await engine.place(KEY_A, price="101.00"))["order_id"]
    response = await _cancel_all(engine, {"client_id": "client-A"})
    assert response.status_code == 200, response.text
    assert sorted(response.json()["cancelled"]) == sorted([a1, a2, a3, a4])
    assert set(response.json()) == {"cancelled"}
    for order_id in (a1, a2, a3, a4):
        assert await _status(engine, order_id) == ("cancelled", "user")
    assert await _status(engine, b1) == ("open", None)
    # Nothing left: an empty list.
    response = await _cancel_all(engine, {"client_id": "client-A"})
    assert (response.status_code, response.json()) == (200, {"cancelled": []})


async def test_one_instrument_and_one_side(engine: Engine) -> None:
    buy = (await engine.place(KEY_A, price="100.00"))["order_id"]
    sell = (await engine.place(KEY_A, side="sell", price="200.00"))["order_id"]
    eth = (await engine.place(KEY_A, instrument="ETH-USD", side="sell", price="3000.05", quantity="1"))["order_id"]
    await engine.drain()
    response = await _cancel_all(engine, {"client_id": "client-A", "instrument": "BTC-USD", "side": "sell"})
    assert (response.status_code, response.json()) == (200, {"cancelled": [sell]})
    assert await _status(engine, buy) == ("open", None)
    assert await _status(engine, eth) == ("open", None)
    response = await _cancel_all(engine, {"client_id": "client-A", "side": "sell"}, ADMIN)
    assert (response.status_code, response.json()) == (200, {"cancelled": [eth]})


async def test_the_order_entry_socket_gets_the_same_answers(engine: Engine) -> None:
    principal = engine.ctx.authenticate(Headers(KEY_A))
    assert isinstance(principal, Principal)
    status, body = await cancel_all(engine.ctx, principal, decode_cancel_all(b'{"client_id": "client-B"}'))
    assert (status, msgspec.json.decode(body)["error"]) == (403, "forbidden")
    order_id = (await engine.place(KEY_A, price="100.00"))["order_id"]
    task = asyncio.create_task(cancel_all(engine.ctx, principal, decode_cancel_all(b'{"client_id": "client-A"}')))
    while not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    status, body = await task
    assert (status, msgspec.json.decode(body)) == (200, {"cancelled": [order_id]})


async def test_a_cancel_all_answered_202_is_applied_in_stream_order(make_engine: EngineFactory) -> None:
    engine = await make_engine(cancel_wait_ms=30)
    before = (await engine.place(KEY_A, price="100.00"))["order_id"]
    assert (await _cancel_all(engine, {"client_id": "client-A"}, match=False)).status_code == 202
    after = (await engine.place(KEY_A, price="100.00"))["order_id"]
    await engine.drain()
    # Accepted before the cancel-all: cancelled, though it was not resting yet; accepted after it: untouched.
    assert await _status(engine, before) == ("cancelled", "user")
    assert await _status(engine, after) == ("open", None)
