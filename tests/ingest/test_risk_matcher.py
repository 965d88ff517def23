"""The matcher's risk limits as a user of the HTTP API sees them (issue 16): POST /orders answers 201, and the
order's state then says `rejected` (price_band, max_open_orders) or `cancelled` (market_protection); PATCH answers
409 amend_rejected naming `price` with the order unchanged. tests/data/risk_limits.toml: BTC-USD band 10%,
protection 5%, at most 3 resting orders per client."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.instruments import Instruments
from tests.ingest.conftest import BROKER, Engine, EngineFactory, limit_order
from tests.ingest.test_amend import _patch


@pytest.fixture
async def engine(make_engine: EngineFactory, risk_instruments: Instruments) -> Engine:
    return await make_engine(instruments=risk_instruments)


async def _order(engine: Engine, **fields: Any) -> dict[str, Any]:
    """POST an order (201), let the matcher apply it, and return GET /orders/{id}."""
    response = await engine.post(limit_order(**fields), BROKER)
    assert response.status_code == 201, response.text
    await engine.drain()
    got = await engine.get(response.json()["order_id"], BROKER)
    assert got.status_code == 200
    body: dict[str, Any] = got.json()
    return body


async def test_orders_beyond_the_band_and_the_cap_are_rejected_and_a_market_order_protected(engine: Engine) -> None:
    await _order(engine, client_id="client-B", side="sell", price="100.00", quantity="1")
    await _order(engine, client_id="client-A", side="buy", price="100.00", quantity="1")  # a trade: the reference
    edge = await _order(engine, client_id="client-A", price="90.00", quantity="1")
    beyond = await _order(engine, client_id="client-A", price="89.99", quantity="1")
    assert (edge["status"], edge["reason"]) == ("open", None)
    assert (beyond["status"], beyond["reason"], beyond["filled_quantity"]) == ("rejected", "price_band", "0")

    for price in ("91.00", "92.00"):
        await _order(engine, client_id="client-A", price=price, quantity="1")
    capped = await _order(engine, client_id="client-A", price="93.00", quantity="1")
    assert (capped["status"], capped["reason"]) == ("rejected", "max_open_orders")

    for price in ("100.00", "105.00", "105.01"):
        await _order(engine, client_id="client-B", side="sell", price=price, quantity="1")
    market = await _order(engine, client_id="client-C", type="market", price=None, quantity="5")
    assert (market["status"], market["reason"], market["filled_quantity"]) == (
        "cancelled", "market_protection", "2")


async def test_an_amend_beyond_the_band_is_409_naming_price_and_leaves_the_order(engine: Engine) -> None:
    await _order(engine, client_id="client-B", side="sell", price="100.00", quantity="1")
    await _order(engine, client_id="client-A", side="buy", price="100.00", quantity="1")
    resting = await _order(engine, client_id="client-A", price="95.00", quantity="1")
    response = await _patch(engine, resting["order_id"], {"price": "89.99"}, BROKER)
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "amend_rejected"
    assert [(d["field"], d["message"]) for d in body["details"]] == [("price", "price_band")]
    assert (body["order"]["price"], body["order"]["status"]) == ("95.00", "open")
    response = await _patch(engine, resting["order_id"], {"price": "90.00"}, BROKER)
    assert response.status_code == 200, response.text
    assert response.json()["price"] == "90.00"
