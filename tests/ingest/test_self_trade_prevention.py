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


async def _view(engine: Engine, order_id: str) -> tuple[str, str, str | None]:
    view = (await engine.get(order_id, KEY_A)).json()
    return view["status"], view["filled_quantity"], view["reason"]


@pytest.mark.parametrize("mode, taker, maker", [
    ("cancel_taker", ("cancelled", "0", "self_trade_prevented"), ("open", "0", None)),
    ("cancel_maker", ("open", "0", None), ("cancelled", "0", "self_trade_prevented")),
    ("cancel_both", ("cancelled", "0", "self_trade_prevented"), ("cancelled", "0", "self_trade_prevented")),
])
async def test_the_incoming_orders_mode_decides_through_http(engine: Engine, mode: str,
                                                             taker: tuple[str, ...], maker: tuple[str, ...]) -> None:
    resting = (await engine.place(KEY_A, side="sell", price="100.00", quantity="1"))["order_id"]
    await engine.drain()
    incoming = (await engine.place(KEY_A, price="100.00", quantity="1", self_trade_prevention=mode))["order_id"]
    await engine.drain()
    assert (await _view(engine, incoming), await _view(engine, resting)) == (taker, maker)
    assert await engine.redis.xlen(engine.keys["BTC-USD"].trades) == 0


async def test_none_lets_a_client_trade_with_itself_and_decrement_reduces(engine: Engine) -> None:
    resting = (await engine.place(KEY_A, side="sell", price="100.00", quantity="1"))["order_id"]
    await engine.drain()
    own = (await engine.place(KEY_A, price="100.00", quantity="0.25"))["order_id"]
    await engine.drain()
    assert await _view(engine, own) == ("filled", "0.25", None)
    assert await engine.redis.xlen(engine.keys["BTC-USD"].trades) == 1
    # decrement: the smaller (the incoming 0.25) is cancelled, the resting one reduced by as much, no trade.
    smaller = (await engine.place(KEY_A, price="100.00", quantity="0.25", self_trade_prevention="decrement"))
    await engine.drain()
    assert await _view(engine, smaller["order_id"]) == ("cancelled", "0", "self_trade_prevented")
    view = (await engine.get(resting, KEY_A)).json()
    assert (view["status"], view["quantity"], view["filled_quantity"], view["remaining_quantity"]) == (
        "partially_filled", "0.75", "0.25", "0.5")
    assert await engine.redis.xlen(engine.keys["BTC-USD"].trades) == 1
