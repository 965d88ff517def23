"""The kill switches and the notional cap over the order-entry socket (issue 16): `place`, `place_batch` and
`amend` answer exactly what POST /orders, POST /orders/batch and PATCH answer; `cancel` stays allowed."""

from __future__ import annotations

import asyncio

from tests.ingest.conftest import ADMIN, limit_order
from tests.ingest.trade_client import (  # noqa: F401 (fixtures)
    TradeServer,
    TradeServerFactory,
    make_trade_server_fixture,
)


async def test_halts_and_the_notional_cap_over_the_socket(make_trade_server: TradeServerFactory, db_url: str) -> None:
    trade: TradeServer = await make_trade_server(database_url=db_url)
    ws = await trade.open()
    await ws.auth("demo-key-A")
    over = await ws.call("place", order=limit_order(price="50000.00", quantity="200.00000001"))
    assert (over["status"], over["body"]["details"][0]["field"]) == (422, "quantity")
    placed = await ws.call("place", order=limit_order(price="100.00", quantity="1"))
    assert placed["status"] == 201
    order_id = placed["body"]["order_id"]
    await trade.engine.drain()

    assert (await trade.http.post("/admin/clients/client-A/halt", headers=ADMIN)).status_code == 200
    refused = await ws.call("place", order=limit_order())
    assert (refused["status"], refused["body"]["error"]) == (403, "client_halted")
    batch = await ws.call("place_batch", orders=[limit_order()])
    assert (batch["status"], batch["body"]["results"][0]["status"]) == (200, 403)
    assert batch["body"]["results"][0]["error"]["error"] == "client_halted"
    amend = await ws.call("amend", order_id=order_id, quantity="2")
    assert (amend["status"], amend["body"]["error"]) == (403, "client_halted")
    await trade.http.delete("/admin/clients/client-A/halt", headers=ADMIN)

    assert (await trade.http.post("/admin/instruments/BTC-USD/halt", headers=ADMIN)).status_code == 200
    refused = await ws.call("place", order=limit_order())
    assert (refused["status"], refused["body"]["error"]) == (409, "instrument_halted")
    amend = await ws.call("amend", order_id=order_id, price="101.00")
    assert (amend["status"], amend["body"]["error"]) == (409, "instrument_halted")
    task = asyncio.create_task(ws.call("cancel", order_id=order_id))
    while not task.done():
        await trade.engine.drain()
        await asyncio.sleep(0.002)
    cancel = await task
    assert (cancel["status"], cancel["body"]["status"]) == (200, "cancelled")
