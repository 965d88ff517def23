"""GET /clients/{client_id}/orders: the client's live orders from the live book, oldest first, as GET /orders
views."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine


async def _orders(engine: Engine, client_id: str = "client-A", headers: dict[str, str] = KEY_A,
                  **params: str) -> list[Any]:
    answer = await engine.client.get(f"/clients/{client_id}/orders", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    orders: list[Any] = answer.json()
    return orders


async def test_live_orders_oldest_first_across_instruments(engine: Engine) -> None:
    first = await engine.place(KEY_A, price="100.00", quantity="2")
    eth = await engine.place(KEY_A, instrument="ETH-USD", side="sell", price="3000.05", quantity="1")
    filled = await engine.place(KEY_A, side="sell", price="200.00", quantity="1")
    await engine.place(client_id="client-B", price="100.00", quantity="1")
    await engine.drain()
    await engine.place(client_id="client-B", price="200.00", quantity="1")  # fills `filled`
    await engine.place(client_id="client-B", side="sell", price="100.00", quantity="0.5")  # first: partially
    await engine.drain()
    accepted = await engine.place(KEY_A, price="99.00", quantity="1")  # not matched yet: still listed

    listed = await _orders(engine)
    assert [o["order_id"] for o in listed] == [first["order_id"], eth["order_id"], accepted["order_id"]]
    assert [o["status"] for o in listed] == ["partially_filled", "open", "accepted"]
    # Each is exactly GET /orders/{id}'s view.
    for order in listed:
        assert order == (await engine.get(order["order_id"])).json()
    assert listed[0]["filled_quantity"] == "0.5" and listed[0]["remaining_quantity"] == "1.5"
    assert filled["order_id"] not in {o["order_id"] for o in listed}

    assert [o["order_id"] for o in await _orders(engine, instrument="ETH-USD")] == [eth["order_id"]]
    assert [o["order_id"] for o in await _orders(engine, limit="2")] == [first["order_id"], eth["order_id"]]
    assert [o["order_id"] for o in await _orders(engine, instrument="BTC-USD", limit="1")] == [first["order_id"]]

    # Cancelled: gone from the list.
    task = asyncio.create_task(engine.client.post(f"/orders/{first['order_id']}/cancel", headers=KEY_A))
    while not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    assert (await task).status_code == 200
    listed = await _orders(engine, "client-A", BROKER)
    assert [o["order_id"] for o in listed] == [eth["order_id"], accepted["order_id"]]


async def test_a_client_without_orders_and_roles(engine: Engine) -> None:
    assert await _orders(engine, "client-Z", ADMIN) == []
    assert await _orders(engine, "client-B", KEY_B) == []
    url = "/clients/client-A/orders"
    assert (await engine.client.get(url)).status_code == 401
    answer = await engine.client.get(url, headers=KEY_B)
    assert (answer.status_code, answer.json()["error"]) == (403, "forbidden")
    assert (await engine.client.get("/clients/a%20b/orders", headers=ADMIN)).status_code == 404
    for params, field in [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
                          ({"instrument": "DOGE-USD"}, "instrument")]:
        answer = await engine.client.get(url, params=params, headers=KEY_A)
        assert (answer.status_code, answer.json()["details"][0]["field"]) == (422, field)
