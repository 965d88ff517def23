"""PATCH /orders/{order_id}: the checks, the `amend` command, and the answers once the matcher applied it."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers

from services.common.auth import Principal
from services.common.db import orders
from services.common.scripts import AMEND
from services.common.wire import fields_to_dict
from services.ingest.amend import amend, decode_amend
from tests.common import test_scripts as held
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine, EngineFactory

UNKNOWN_ID = "00000000-0000-7000-8000-000000000000"


def _state(view: dict[str, Any]) -> tuple[Any, ...]:
    return (view["status"], view["price"], view["quantity"], view["filled_quantity"], view["remaining_quantity"],
            view["reason"])


async def _patch(engine: Engine, order_id: str, body: Any, headers: dict[str, str] = KEY_A, *,
                 match: bool = True) -> httpx.Response:
    """PATCH while (optionally) the matcher keeps applying commands, as the real one would."""
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    task = asyncio.create_task(engine.client.patch(f"/orders/{order_id}", content=content,
                                                   headers={**headers, "content-type": "application/json"}))
    while match and not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    return await task


async def _book(engine: Engine, side: str) -> list[tuple[str, str]]:
    book = (await engine.client.get("/orderbook?instrument=BTC-USD")).json()
    return [(level["price"], level["quantity"]) for level in book[side]]


def test_amend_lua_is_held_to_its_declaration() -> None:
    held.test_the_script_numbers_no_position_of_keys_or_argv(AMEND)
    held.test_the_script_uses_exactly_the_declared_keys_and_argv(AMEND)
    held.test_what_a_script_writes_is_under_its_declared_keys(AMEND)


# Checks, and the command --------------------------------------------------------------------------

async def test_the_command_on_the_stream(make_engine: EngineFactory) -> None:
    engine = await make_engine(cancel_wait_ms=30)
    order_id = (await engine.place(KEY_A, price="100.00", quantity="2"))["order_id"]
    response = await _patch(engine, order_id, {"quantity": "1.5"}, match=False)
    assert (response.status_code, response.json()) == (202, {"order_id": order_id, "status": "amend_requested"})
    response = await _patch(engine, order_id, {"price": 100.05, "quantity": "3e0"}, BROKER, match=False)
    assert response.status_code == 202
    entries = await engine.redis.xrange(engine.keys["BTC-USD"].orders)
    commands = [fields_to_dict(fields) for _, fields in entries[1:]]
    assert [{k: v for k, v in c.items() if k not in ("ts", "request_id")} for c in commands] == [
        {"cmd": "amend", "order_id": order_id, "client_id": "client-A", "price_ticks": "",
         "quantity_lots": "150000000"},
        {"cmd": "amend", "order_id": order_id, "client_id": "broker", "price_ticks": "10005",
         "quantity_lots": "300000000"},
    ]
    assert len({c["request_id"] for c in commands}) == 2 and all(c["ts"].isdigit() for c in commands)


@pytest.mark.parametrize("body, field", [
    ({}, "body"),
    ({"quantity": "0.000000001"}, "quantity"),  # not a multiple of the lot
    ({"quantity": "1001"}, "quantity"),
    ({"quantity": "0"}, "quantity"),
    ({"quantity": "-1"}, "quantity"),
    ({"quantity": None}, "quantity"),
    ({"quantity": "1 "}, "quantity"),
    ({"price": "100.001"}, "price"),  # not a multiple of the tick
    ({"price": "10000000.01"}, "price"),
    ({"price": True}, "price"),
    ({"price": "NaN"}, "price"),
    ({"quantity": "1", "side": "sell"}, "side"),
])
async def test_422_names_the_field(engine: Engine, body: dict[str, Any], field: str) -> None:
    order_id = (await engine.place(KEY_A, price="100.00"))["order_id"]
    response = await _patch(engine, order_id, body, match=False)
    assert response.status_code == 422, response.text
    assert (response.json()["error"], response.json()["details"][0]["field"]) == ("validation_error", field)
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 1


async def test_eth_ticks_and_a_market_orders_price(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, instrument="ETH-USD", price="3000.05", quantity="1"))["order_id"]
    response = await _patch(engine, order_id, {"price": "3000.01"}, match=False)
    assert (response.status_code, response.json()["details"][0]["field"]) == (422, "price")
    market = await engine.place(KEY_A, type="market", price=None)
    response = await _patch(engine, market["order_id"], {"price": "100.00"}, match=False)
    assert (response.status_code, response.json()["details"][0]["field"]) == (422, "price")


async def test_400_413_401_404_403(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A))["order_id"]
    assert (await _patch(engine, order_id, b"{", match=False)).status_code == 400
    assert (await _patch(engine, order_id, b"[1]", match=False)).status_code == 400
    assert (await _patch(engine, order_id, b'{"quantity": "' + b"1" * 17000 + b'"}', match=False)
            ).status_code == 413
    assert (await _patch(engine, order_id, {"quantity": "1"}, {}, match=False)).status_code == 401
    assert (await _patch(engine, UNKNOWN_ID, {"quantity": "1"}, match=False)).status_code == 404
    assert (await _patch(engine, "not an id", {"quantity": "1"}, match=False)).status_code == 404
    response = await _patch(engine, order_id, {"quantity": "1"}, KEY_B, match=False)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 1
    # Checks run in the order 413, 401, 400, 422, then 404 / 403.
    assert (await _patch(engine, UNKNOWN_ID, b"{", {}, match=False)).status_code == 401
    assert (await _patch(engine, UNKNOWN_ID, b"{", match=False)).status_code == 400
    assert (await _patch(engine, UNKNOWN_ID, {}, match=False)).status_code == 422
    assert (await _patch(engine, order_id, {"price": "1.001"}, KEY_B, match=False)).status_code == 403


async def test_a_final_order_is_409_amend_rejected_with_the_order(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    await engine.place(client_id="client-B", side="sell", price="100.00", quantity="1")
    await engine.drain()
    response = await _patch(engine, order_id, {"quantity": "2"}, match=False)
    assert response.status_code == 409
    body = response.json()
    assert (body["error"], body["details"]) == ("amend_rejected", [{"field": "order_id", "message": "already_filled"}])
    assert _state(body["order"]) == ("filled", "100.00", "1", "1", "0", None)
    assert set(body) == {"error", "message", "details", "order"}
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 2  # no amend command enqueued


# Applied by the matcher -----------------------------------------------------------------------------

async def test_lowering_the_quantity_keeps_the_queue_place(engine: Engine) -> None:
    first = (await engine.place(KEY_A, side="sell", price="100.00", quantity="2"))["order_id"]
    second = (await engine.place(client_id="client-B", side="sell", price="100.00", quantity="1"))["order_id"]
    await engine.drain()
    response = await _patch(engine, first, {"quantity": "1.5"})
    assert response.status_code == 200, response.text
    assert _state(response.json()) == ("open", "100.00", "1.5", "0", "1.5", None)
    assert response.json()["order_id"] == first
    assert await _book(engine, "asks") == [("100.00", "2.5")]
    # Still first in its level: a buy of 1.5 fills it alone.
    await engine.place(client_id="client-C", price="100.00", quantity="1.5")
    await engine.drain()
    assert (await engine.get(first)).json()["status"] == "filled"
    assert (await engine.get(second, BROKER)).json()["status"] == "open"


async def test_raising_the_quantity_goes_to_the_back_of_the_level(engine: Engine) -> None:
    first = (await engine.place(KEY_A, side="sell", price="100.00", quantity="1"))["order_id"]
    second = (await engine.place(client_id="client-B", side="sell", price="100.00", quantity="1"))["order_id"]
    await engine.drain()
    response = await _patch(engine, first, {"quantity": "2"})
    assert _state(response.json()) == ("open", "100.00", "2", "0", "2", None)
    await engine.place(client_id="client-C", price="100.00", quantity="1")
    await engine.drain()
    assert (await engine.get(second, BROKER)).json()["status"] == "filled"
    assert (await engine.get(first)).json()["status"] == "open"


async def test_a_new_price_that_crosses_trades(engine: Engine) -> None:
    await engine.place(client_id="client-B", side="sell", price="101.00", quantity="0.4")
    order_id = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    await engine.drain()
    response = await _patch(engine, order_id, {"price": "101.00"})
    assert response.status_code == 200, response.text
    assert _state(response.json()) == ("partially_filled", "101.00", "1", "0.4", "0.6", None)
    assert await _book(engine, "bids") == [("101.00", "0.6")]
    assert await _book(engine, "asks") == []


async def test_a_post_only_amend_that_would_cross_is_409_unchanged(engine: Engine) -> None:
    await engine.place(client_id="client-B", side="sell", price="101.00", quantity="1")
    order_id = (await engine.place(KEY_A, price="100.00", quantity="1", post_only=True))["order_id"]
    await engine.drain()
    response = await _patch(engine, order_id, {"price": "101.00", "quantity": "2"})
    assert response.status_code == 409, response.text
    body = response.json()
    assert (body["error"], body["details"]) == ("amend_rejected",
                                                [{"field": "price", "message": "post_only_would_cross"}])
    assert _state(body["order"]) == ("open", "100.00", "1", "0", "1", None)
    assert _state((await engine.get(order_id)).json()) == _state(body["order"])


async def test_a_quantity_not_above_the_filled_is_409(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    await engine.place(client_id="client-B", side="sell", price="100.00", quantity="0.4")
    await engine.drain()
    response = await _patch(engine, order_id, {"quantity": "0.4"})
    assert response.status_code == 409, response.text
    assert response.json()["details"] == [{"field": "quantity", "message": "quantity_not_above_filled"}]
    assert _state(response.json()["order"]) == ("partially_filled", "100.00", "1", "0.4", "0.6", None)


async def test_an_amend_that_changes_nothing_is_200_and_an_accepted_order_is_amended(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    response = await _patch(engine, order_id, {"quantity": "1", "price": "100"}, ADMIN)
    assert response.status_code == 200, response.text
    assert _state(response.json()) == ("open", "100.00", "1", "0", "1", None)
    # Placed and amended before the matcher ran: the matcher applies them in stream order.
    other = (await engine.place(KEY_A, price="99.00", quantity="1"))["order_id"]
    response = await _patch(engine, other, {"price": "99.50"})
    assert _state(response.json()) == ("open", "99.50", "1", "0", "1", None)


async def test_the_order_entry_socket_gets_the_same_answers(engine: Engine) -> None:
    principal = engine.ctx.authenticate(Headers(KEY_A))
    assert isinstance(principal, Principal)
    order_id = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    status, body = await amend(engine.ctx, principal, UNKNOWN_ID, decode_amend(b'{"quantity": "2"}'))
    assert (status, msgspec.json.decode(body)["error"]) == (404, "not_found")
    status, body = await amend(engine.ctx, principal, order_id, decode_amend(b"{}"))
    assert (status, msgspec.json.decode(body)["details"][0]["field"]) == (422, "body")
    task = asyncio.create_task(amend(engine.ctx, principal, order_id, decode_amend(b'{"quantity": "2"}')))
    while not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    status, body = await task
    assert (status, _state(msgspec.json.decode(body))) == (200, ("open", "100.00", "2", "0", "2", None))


async def test_an_amend_answered_202_is_applied_in_stream_order(make_engine: EngineFactory) -> None:
    engine = await make_engine(cancel_wait_ms=30)
    order_id = (await engine.place(KEY_A, price="100.00", quantity="2"))["order_id"]
    assert (await _patch(engine, order_id, {"quantity": "1"}, match=False)).status_code == 202
    assert (await _patch(engine, order_id, {"price": "99.00"}, match=False)).status_code == 202
    await engine.drain()
    assert _state((await engine.get(order_id)).json()) == ("open", "99.00", "1", "0", "1", None)


async def test_an_order_only_postgresql_knows_is_final_409(make_engine: EngineFactory, db_url: str,
                                                           db: AsyncEngine) -> None:
    """After a rebuild Redis holds only the open orders: one found in PostgreSQL alone is final."""
    engine = await make_engine(database_url=db_url)
    at = dt.datetime(2026, 11, 25, 1, 2, 3, 456000, tzinfo=dt.UTC)
    async with db.begin() as conn:
        await conn.execute(orders.insert().values(
            order_id=UNKNOWN_ID, client_order_id=None, client_id="client-A", instrument="BTC-USD", side="buy",
            type="limit", time_in_force="GTC", post_only=False, price=Decimal("100.00"), quantity=Decimal("1"),
            filled_quantity=Decimal("0"), remaining_quantity=Decimal("1"), filled_quote=Decimal("0"),
            status="cancelled", reason="user", created_at=at, updated_at=at, last_event_seq=2))
    response = await _patch(engine, UNKNOWN_ID, {"quantity": "2"}, KEY_B, match=False)
    assert response.status_code == 403
    response = await _patch(engine, UNKNOWN_ID, {"quantity": "2"}, match=False)
    assert response.status_code == 409
    assert response.json()["details"] == [{"field": "order_id", "message": "already_cancelled"}]
    assert _state(response.json()["order"]) == ("cancelled", "100.00", "1", "0", "1", "user")
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 0
