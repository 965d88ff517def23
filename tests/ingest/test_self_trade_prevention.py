"""The `self_trade_prevention` order field on POST /orders and POST /orders/batch: checked, carried in the
command, part of what "the same body" means for idempotency."""

from __future__ import annotations

import pytest

from services.common.wire import fields_to_dict
from tests.ingest.conftest import KEY_A, Engine, limit_order

MODES = ["none", "cancel_taker", "cancel_maker", "cancel_both", "decrement"]


async def _command(engine: Engine, symbol: str = "BTC-USD", index: int = -1) -> dict[str, str]:
    """The orders-stream entry, with the mode it means: an entry without the field means `none`
    (docs/order-management.md), and the default is left out to keep entries short."""
    entries = await engine.redis.xrange(engine.keys[symbol].orders)
    fields = fields_to_dict(entries[index][1])
    return {"self_trade_prevention": "none", **fields}


@pytest.mark.parametrize("mode", MODES)
async def test_each_mode_is_taken_and_carried_in_the_command(engine: Engine, mode: str) -> None:
    response = await engine.post(limit_order(self_trade_prevention=mode))
    assert response.status_code == 201, response.text
    command = await _command(engine)
    assert (command["order_id"], command["self_trade_prevention"]) == (response.json()["order_id"], mode)


async def test_the_default_is_none_for_limit_and_market_orders(engine: Engine) -> None:
    assert (await engine.post(limit_order())).status_code == 201
    assert (await _command(engine))["self_trade_prevention"] == "none"
    market = {"client_id": "client-A", "instrument": "BTC-USD", "side": "sell", "type": "market",
              "quantity": "0.1", "self_trade_prevention": "cancel_taker"}
    assert (await engine.post(market)).status_code == 201
    assert (await _command(engine))["self_trade_prevention"] == "cancel_taker"


@pytest.mark.parametrize("value", ["cancel_newest", "", "NONE", 1, None, True])
async def test_an_unknown_mode_is_422_naming_the_field(engine: Engine, value: object) -> None:
    response = await engine.post(limit_order(self_trade_prevention=value))
    assert response.status_code == 422, response.text
    assert response.json()["details"][0]["field"] == "self_trade_prevention"
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 0


async def test_a_batch_takes_each_orders_mode(engine: Engine) -> None:
    orders = [limit_order(self_trade_prevention="decrement"), limit_order(),
              limit_order(self_trade_prevention="sometimes")]
    response = await engine.client.post("/orders/batch", json={"orders": orders}, headers=KEY_A)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 422]
    assert results[2]["error"]["details"][0]["field"] == "self_trade_prevention"
    assert [(await _command(engine, index=i))["self_trade_prevention"] for i in (0, 1)] == ["decrement", "none"]


async def test_the_mode_is_part_of_the_idempotent_body(engine: Engine) -> None:
    first = await engine.post(limit_order(idempotency_key="stp-1", self_trade_prevention="cancel_both"))
    assert first.status_code == 201
    again = await engine.post(limit_order(idempotency_key="stp-1", self_trade_prevention="cancel_both"))
    assert (again.status_code, again.json()) == (200, first.json())
    other = await engine.post(limit_order(idempotency_key="stp-1", self_trade_prevention="cancel_maker"))
    assert (other.status_code, other.json()["error"]) == (409, "idempotency_conflict")
    # An explicit "none" is the default's body.
    plain = await engine.post(limit_order(idempotency_key="stp-2"))
    explicit = await engine.post(limit_order(idempotency_key="stp-2", self_trade_prevention="none"))
    assert (explicit.status_code, explicit.json()) == (200, plain.json())
