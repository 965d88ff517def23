"""GET /orders/{id} through an order's lifecycle, and its cancel (POST .../cancel, DELETE)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine, EngineFactory

UNKNOWN_ID = "00000000-0000-7000-8000-000000000000"


def _state(view: dict[str, Any]) -> tuple[Any, ...]:
    return (view["status"], view["filled_quantity"], view["remaining_quantity"], view["average_price"],
            view["reason"])


async def test_lifecycle_accepted_open_partially_filled_filled(engine: Engine) -> None:
    order = await engine.place(KEY_A, price="100.01", quantity="1", client_order_id="c-7")
    order_id = order["order_id"]
    view = (await engine.get(order_id)).json()
    assert view == order
    assert _state(view) == ("accepted", "0", "1", None, None)

    await engine.drain()
    view = (await engine.get(order_id)).json()
    assert _state(view) == ("open", "0", "1", None, None)
    assert view["created_at"] == order["created_at"]

    await engine.place(client_id="client-B", side="sell", price="100.00", quantity="0.25")
    await engine.drain()
    view = (await engine.get(order_id)).json()
    assert _state(view) == ("partially_filled", "0.25", "0.75", "100.01", None)
    assert view["updated_at"] >= view["created_at"]

    await engine.place(client_id="client-B", side="sell", price="99.50", quantity="0.75")
    await engine.drain()
    view = (await engine.get(order_id)).json()
    assert _state(view) == ("filled", "1", "0", "100.01", None)
    assert (view["client_order_id"], view["price"], view["quantity"]) == ("c-7", "100.01", "1")


async def test_average_price_is_exact_then_rounded_half_even_to_the_tick(engine: Engine) -> None:
    await engine.place(client_id="s", side="sell", price="100.00", quantity="0.1")
    await engine.place(client_id="s", side="sell", price="100.01", quantity="0.2")
    await engine.place(client_id="s", side="sell", price="100.03", quantity="0.3")
    taker = await engine.place(client_id="t", price="100.01", quantity="0.3")
    # 0.1 @ 100.00 + 0.2 @ 100.01 = 30.002 / 0.3 = 100.00666... -> 100.01
    market = await engine.place(client_id="t", type="market", price=None, quantity="0.5")
    await engine.drain()
    view = (await engine.get(taker["order_id"], BROKER)).json()
    assert _state(view) == ("filled", "0.3", "0", "100.01", None)
    # A market order for more than the book: 0.3 @ 100.03 traded, the rest cancelled.
    view = (await engine.get(market["order_id"], BROKER)).json()
    assert _state(view) == ("cancelled", "0.3", "0.2", "100.03", "market_remainder")
    assert (view["price"], view["time_in_force"]) == (None, "IOC")


async def test_who_may_read_an_order(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A))["order_id"]
    assert (await engine.get(order_id, KEY_A)).status_code == 200
    assert (await engine.get(order_id, BROKER)).status_code == 200
    assert (await engine.get(order_id, ADMIN)).status_code == 200
    response = await engine.get(order_id, KEY_B)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    assert (await engine.get(order_id, {})).status_code == 401
    assert (await engine.get(UNKNOWN_ID)).status_code == 404
    assert (await engine.get("not an id at all")).json()["error"] == "not_found"


async def _cancel(engine: Engine, order_id: str, headers: dict[str, str] = KEY_A, *, match: bool = True,
                  method: str = "POST") -> httpx.Response:
    """Cancel while (optionally) the matcher keeps applying commands, as the real one would."""
    if method == "POST":
        request = engine.client.post(f"/orders/{order_id}/cancel", headers=headers)
    else:
        request = engine.client.delete(f"/orders/{order_id}", headers=headers)
    task = asyncio.create_task(request)
    while match and not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    return await task


async def test_cancel_an_open_order(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, quantity="2"))["order_id"]
    await engine.drain()
    response = await _cancel(engine, order_id)
    assert response.status_code == 200
    assert _state(response.json()) == ("cancelled", "0", "2", None, "user")
    assert (await engine.client.get("/orderbook?instrument=BTC-USD")).json()["bids"] == []


async def test_cancel_a_partially_filled_order_keeps_its_fills(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, quantity="2"))["order_id"]
    await engine.place(client_id="client-B", side="sell", price="50000.00", quantity="0.5")
    await engine.drain()
    response = await _cancel(engine, order_id, method="DELETE")
    assert response.status_code == 200
    assert _state(response.json()) == ("cancelled", "0.5", "1.5", "50000.00", "user")


async def test_cancel_a_final_order_is_409_with_its_state(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A, quantity="1"))["order_id"]
    await engine.place(client_id="client-B", side="sell", price="50000.00", quantity="1")
    await engine.drain()
    response = await _cancel(engine, order_id)
    assert response.status_code == 409
    assert _state(response.json()) == ("filled", "1", "0", "50000.00", None)
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 2  # no cancel command enqueued


async def test_cancel_twice_is_200_then_409(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A))["order_id"]
    await engine.drain()
    assert (await _cancel(engine, order_id)).status_code == 200
    again = await _cancel(engine, order_id)
    assert (again.status_code, again.json()["status"]) == (409, "cancelled")


async def test_cancel_unknown_is_404_and_another_traders_is_403(engine: Engine) -> None:
    assert (await _cancel(engine, UNKNOWN_ID)).status_code == 404
    order_id = (await engine.place(KEY_A))["order_id"]
    await engine.drain()
    assert (await _cancel(engine, order_id, KEY_B, match=False)).status_code == 403
    assert (await _cancel(engine, order_id, {}, match=False)).status_code == 401
    assert (await engine.get(order_id)).json()["status"] == "open"
    # A broker may cancel any client's order.
    assert (await _cancel(engine, order_id, BROKER)).status_code == 200


async def test_cancel_an_order_still_accepted_waits_for_the_matcher(engine: Engine) -> None:
    order_id = (await engine.place(KEY_A))["order_id"]
    response = await _cancel(engine, order_id)
    assert response.status_code == 200
    assert _state(response.json()) == ("cancelled", "0", "0.5", None, "user")
    book = (await engine.client.get("/orderbook?instrument=BTC-USD")).json()
    assert (book["bids"], book["asks"]) == ([], [])


async def test_cancel_answers_202_when_no_outcome_arrives_in_time(make_engine: EngineFactory) -> None:
    engine = await make_engine(cancel_wait_ms=50)
    order_id = (await engine.place(KEY_A))["order_id"]
    response = await _cancel(engine, order_id, match=False)
    assert response.status_code == 202
    assert response.json() == {"order_id": order_id, "status": "cancel_requested"}
    await engine.drain()
    assert _state((await engine.get(order_id)).json()) == ("cancelled", "0", "0.5", None, "user")
