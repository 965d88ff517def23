"""max_order_notional at ingest (issue 16): a limit order, a batch's order or an amend whose price x quantity is
over the instrument's cap is 422 naming `quantity`; exactly at the cap passes. Exact integers of ticks x lots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from services.common.auth import ADMIN
from services.common.instruments import load_instruments
from services.ingest.place_order import place_order
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import BROKER, Engine, EngineFactory, limit_order
from tests.ingest.test_amend import _patch
from tests.ingest.test_place_batch import results_of

# BTC-USD: tick 0.01, lot 1e-8, the default cap 10,000,000 USD. ETH-USD: tick 0.05, lot 0.001.
AT_CAP = {"price": "50000.00", "quantity": "200"}
ONE_LOT_OVER = {"price": "50000.00", "quantity": "200.00000001"}


def _names_quantity(status: int, body: dict[str, Any]) -> None:
    assert status == 422, body
    assert body["error"] == "validation_error"
    assert [d["field"] for d in body["details"]] == ["quantity"]
    assert "max_order_notional" in body["details"][0]["message"]


async def _risk_rejections(engine: Engine, reason: str) -> float:
    text = (await engine.client.get("/metrics")).text
    line = f'risk_rejections_total{{reason="{reason}"}} '
    return sum(float(row[len(line):]) for row in text.splitlines() if row.startswith(line))


async def test_post_at_the_cap_passes_and_one_lot_over_is_422_naming_quantity(engine: Engine) -> None:
    assert {i.risk.max_order_notional for i in engine.settings.instruments.values()} == {10_000_000}
    assert (await engine.post(limit_order(**AT_CAP), BROKER)).status_code == 201
    response = await engine.post(limit_order(**ONE_LOT_OVER), BROKER)
    _names_quantity(response.status_code, response.json())
    # A tick over at the same quantity, and the other instrument's own units.
    response = await engine.post(limit_order(price="50000.01", quantity="200"), BROKER)
    _names_quantity(response.status_code, response.json())
    eth = {"instrument": "ETH-USD", "price": "1000000.00"}
    assert (await engine.post(limit_order(**eth, quantity="10"), BROKER)).status_code == 201
    response = await engine.post(limit_order(**eth, quantity="10.001"), BROKER)
    _names_quantity(response.status_code, response.json())
    assert await _risk_rejections(engine, "max_order_notional") == 3
    entries = await engine.redis.xlen(engine.keys["BTC-USD"].orders)
    assert entries == 1


async def test_market_orders_have_no_notional_cap(engine: Engine) -> None:
    response = await engine.post(limit_order(type="market", price=None, quantity="1000"), BROKER)
    assert response.status_code == 201, response.text


async def test_batch_elements_are_checked_each(engine: Engine) -> None:
    results = await results_of(engine, [limit_order(**AT_CAP), limit_order(**ONE_LOT_OVER),
                                        limit_order(price="1.00", quantity="1")])
    assert [r["status"] for r in results] == [201, 422, 201]
    _names_quantity(results[1]["status"], results[1]["error"])


async def test_amend_to_the_cap_passes_and_one_lot_over_is_422(engine: Engine) -> None:
    order_id = (await engine.place(BROKER, price="50000.00", quantity="100"))["order_id"]
    over = await _patch(engine, order_id, {"quantity": "200.00000001"}, BROKER)
    _names_quantity(over.status_code, over.json())
    at = await _patch(engine, order_id, {"quantity": "200"}, BROKER)
    assert (at.status_code, at.json()["quantity"]) == (200, "200"), at.text
    # The new price times the order's current quantity (200): a tick up is over.
    over = await _patch(engine, order_id, {"price": "50000.01"}, BROKER)
    _names_quantity(over.status_code, over.json())
    # Both at once: the new price times the new quantity.
    both = await _patch(engine, order_id, {"price": "100000.00", "quantity": "100"}, BROKER)
    assert (both.status_code, both.json()["price"]) == (200, "100000.00"), both.text
    over = await _patch(engine, order_id, {"price": "100000.00", "quantity": "100.00000001"}, BROKER)
    _names_quantity(over.status_code, over.json())
    view = (await engine.get(order_id, BROKER)).json()
    assert (view["price"], view["quantity"]) == ("100000.00", "100")
    assert await _risk_rejections(engine, "max_order_notional") == 3


async def test_the_order_entry_socket_shares_the_check(engine: Engine) -> None:
    # The socket's `place` is place_order itself.
    response = await place_order(engine.ctx, ADMIN, msgspec.json.encode(limit_order(**ONE_LOT_OVER)), None)
    assert response.status_code == 422
    _names_quantity(response.status_code, msgspec.json.decode(bytes(response.body)))


async def test_a_cap_of_0_is_off(make_engine: EngineFactory, tmp_path: Path) -> None:
    path = tmp_path / "instruments.toml"
    path.write_text(TWO_INSTRUMENTS.read_text().replace('max_price = "10000000"',
                                                        'max_price = "10000000"\nmax_order_notional = 0'))
    engine = await make_engine(instruments=load_instruments(path))
    response = await engine.post(limit_order(price="10000000.00", quantity="1000"), BROKER)
    assert response.status_code == 201, response.text
