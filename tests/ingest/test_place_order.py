"""POST /orders: every row of the contract's table, and the order in which the checks run."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.wire import decode_record, fields_to_dict
from tests.ingest.conftest import BROKER, KEY_A, KEY_B, Engine, EngineFactory, limit_order

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def test_201_returns_the_order_with_location_and_puts_one_command_on_the_stream(engine: Engine) -> None:
    response = await engine.post(limit_order(client_order_id="my-1", price=50000.1))
    assert response.status_code == 201
    body = response.json()
    order_id = body["order_id"]
    assert UUID7.match(order_id)
    assert response.headers["location"] == f"/orders/{order_id}"
    assert ISO_MS.match(body["created_at"]) and body["updated_at"] == body["created_at"]
    assert {k: v for k, v in body.items() if k not in ("order_id", "created_at", "updated_at")} == {
        "client_order_id": "my-1", "client_id": "client-A", "instrument": "BTC-USD", "side": "buy",
        "type": "limit", "time_in_force": "GTC", "post_only": False, "price": "50000.10", "quantity": "0.5",
        "filled_quantity": "0", "remaining_quantity": "0.5", "average_price": None, "status": "accepted",
        "reason": None,
    }
    entries = await engine.redis.xrange(engine.keys["BTC-USD"].orders)
    assert len(entries) == 1
    fields = fields_to_dict(entries[0][1])
    assert fields == {
        "cmd": "new", "order_id": order_id, "client_id": "client-A", "client_order_id": "my-1", "side": "buy",
        "type": "limit", "time_in_force": "GTC", "post_only": "0", "price_ticks": "5000010",
        "quantity_lots": "50000000", "created_at": fields["created_at"],
    }
    packed = await engine.redis.hget(engine.keys["BTC-USD"].order_state, order_id)
    record = decode_record(packed)
    assert (record.status, record.price_ticks, record.quantity_lots, record.filled_lots) == (
        "accepted", 5000010, 50000000, 0)


async def test_market_order_is_ioc_without_price_and_exponent_quantities_are_exact(engine: Engine) -> None:
    response = await engine.post(
        {"client_id": "client-A", "instrument": "BTC-USD", "side": "sell", "type": "market",
         "quantity": 1e-8})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["price"], body["time_in_force"], body["quantity"]) == (None, "IOC", "0.00000001")
    fields = fields_to_dict((await engine.redis.xrange(engine.keys["BTC-USD"].orders))[0][1])
    assert (fields["price_ticks"], fields["quantity_lots"], fields["type"]) == ("0", "1", "market")


async def test_quantity_in_exponent_notation_string_and_eth_ticks(engine: Engine) -> None:
    response = await engine.post(limit_order(instrument="ETH-USD", price="3000.05", quantity="1.5e-2"))
    assert response.status_code == 201, response.text
    assert (response.json()["price"], response.json()["quantity"]) == ("3000.05", "0.015")


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"42", b'{"client_id": "client-A",', b"null"])
async def test_400_when_the_body_is_not_a_json_object(engine: Engine, body: bytes) -> None:
    response = await engine.client.post("/orders", content=body, headers=KEY_A)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


@pytest.mark.parametrize("body", [
    b"[" * 8000 + b"]" * 8000,
    b'{"client_id": ' + b"[" * 8000 + b"]" * 8000 + b"}",  # once a 500: the JSON check recursed
    b'{"client_id": "client-A", "extra": ' + b"[" * 8000 + b"]" * 8000 + b"}",
    # once a 500: msgspec skips a raw value (price, quantity) recursively
    b'{"client_id": "client-A", "instrument": "BTC-USD", "side": "buy", "type": "limit", "quantity": '
    + b"[" * 8000 + b"]" * 8000 + b"}",
])
async def test_400_for_a_body_nested_8000_levels_deep(engine: Engine, body: bytes,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    response = await engine.client.post("/orders", content=body, headers=KEY_A)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"
    assert not [r for r in caplog.records if r.exc_info]


async def test_413_over_16_kib_with_or_without_content_length(engine: Engine) -> None:
    big = b'{"client_id": "' + b"x" * 17_000 + b'"}'
    response = await engine.client.post("/orders", content=big, headers=KEY_A)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 1000

    response = await engine.client.post("/orders", content=chunks(), headers=KEY_A)
    assert response.status_code == 413


def _detail_fields(response: Any) -> list[str]:
    return [d["field"] for d in response.json()["details"]]


@pytest.mark.parametrize(("change", "field"), [
    ({"side": None}, "side"),  # missing (None removes a field)
    ({"colour": "blue"}, "colour"),  # unknown
    ({"quantity": [1]}, "quantity"),  # wrong type
    ({"post_only": "yes"}, "post_only"),
    ({"side": "hold"}, "side"),  # bad enum
    ({"time_in_force": "GTD"}, "time_in_force"),
    ({"price": "50000.001"}, "price"),  # not a multiple of the tick
    ({"quantity": "0.000000001"}, "quantity"),  # not a multiple of the lot
    ({"quantity": "1000.00000001"}, "quantity"),  # above max
    ({"quantity": "1e999999999"}, "quantity"),
    ({"price": "10000000.01"}, "price"),  # above max price
    ({"instrument": "ETH-USD", "price": "3000", "quantity": "0.009"}, "quantity"),  # below min
    ({"type": "market", "time_in_force": None}, "price"),  # price on a market order
    ({"type": "market", "price": None, "time_in_force": "FOK"}, "time_in_force"),
    ({"type": "market", "price": None, "post_only": True}, "post_only"),
    ({"price": None}, "price"),  # no price on a limit order
    ({"price": "NaN"}, "price"),
    ({"price": "Infinity"}, "price"),
    ({"quantity": "sNaN"}, "quantity"),
    ({"price": "-50000"}, "price"),  # negative
    ({"quantity": 0}, "quantity"),
    ({"price": "50 000"}, "price"),
    ({"instrument": "DOGE-USD"}, "instrument"),  # unknown instrument
    ({"idempotency_key": "has space"}, "idempotency_key"),
    ({"idempotency_key": "k" * 129}, "idempotency_key"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"client_id": ""}, "client_id"),
    ({"client_order_id": "x" * 65}, "client_order_id"),
])
async def test_422_names_the_bad_field(engine: Engine, change: dict[str, Any], field: str) -> None:
    body = limit_order()
    for name, value in change.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    response = await engine.post(body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "validation_error"
    assert _detail_fields(response)[0] == field, error
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 0


async def test_422_for_a_bad_idempotency_key_header_or_one_differing_from_the_body(engine: Engine) -> None:
    response = await engine.post(limit_order(), headers={**KEY_A, "Idempotency-Key": "bad key!"})
    assert (response.status_code, _detail_fields(response)) == (422, ["Idempotency-Key"])
    response = await engine.post(limit_order(idempotency_key="a"), headers={**KEY_A, "Idempotency-Key": "b"})
    assert (response.status_code, _detail_fields(response)) == (422, ["idempotency_key"])


async def test_401_without_or_with_a_bad_key(engine: Engine) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "demo-key-A"}):
        response = await engine.post(limit_order(), headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


async def test_403_when_a_trader_acts_for_another_client_but_a_broker_may(engine: Engine) -> None:
    response = await engine.post(limit_order(client_id="client-B"), headers=KEY_A)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    assert (await engine.post(limit_order(client_id="client-B"), headers=KEY_B)).status_code == 201
    assert (await engine.post(limit_order(client_id="any-account-7"), headers=BROKER)).status_code == 201


async def test_checks_run_in_the_contract_order(engine: Engine) -> None:
    big = b"[" + b"1," * 9000 + b"1]"
    # 413 before 401, 401 before 400, 400 before 422, 422 before 403.
    assert (await engine.client.post("/orders", content=big)).status_code == 413
    assert (await engine.client.post("/orders", content=b"nope")).status_code == 401
    assert (await engine.client.post("/orders", content=b"nope", headers=KEY_A)).status_code == 400
    response = await engine.post(limit_order(client_id="client-B", price="1.001"), headers=KEY_A)
    assert response.status_code == 422


async def test_429_with_retry_after_per_client(make_engine: EngineFactory) -> None:
    engine = await make_engine(rate_limit_per_sec=1, rate_limit_burst=2)
    assert [(await engine.post(limit_order())).status_code for _ in range(2)] == [201, 201]
    # 403 comes before 429: a trader acting for another client is refused as such.
    assert (await engine.post(limit_order(client_id="client-B"))).status_code == 403
    response = await engine.post(limit_order())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "rate_limited"
    # Another client's bucket is its own.
    assert (await engine.post(limit_order(client_id="client-B"), headers=KEY_B)).status_code == 201
    metrics = (await engine.client.get("/metrics")).text
    assert "rate_limited_total 1.0" in metrics
    assert 'orders_rejected_total{reason="rate_limited"} 1.0' in metrics


async def test_rate_limit_zero_turns_it_off(make_engine: EngineFactory) -> None:
    engine = await make_engine(rate_limit_per_sec=0, rate_limit_burst=1)
    assert [(await engine.post(limit_order())).status_code for _ in range(5)] == [201] * 5


async def test_503_while_the_matcher_lags_beyond_the_bound_then_201_again(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_matcher_lag=2)
    first = await engine.post(limit_order(idempotency_key="k1"))
    for _ in range(2):
        assert (await engine.post(limit_order())).status_code == 201
    # The background poll does this every lag_poll_interval_s; run it now to keep the test exact.
    await engine.ctx.lag.poll_once()
    assert engine.ctx.lag.lags == {"BTC-USD": 3, "ETH-USD": 0}
    response = await engine.post(limit_order())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    # Idempotency answers before backpressure: the first answer is still replayed.
    replay = await engine.post(limit_order(idempotency_key="k1"))
    assert (replay.status_code, replay.content) == (200, first.content)
    # Other instruments are not held back.
    eth = limit_order(instrument="ETH-USD", price="3000", quantity="1")
    assert (await engine.post(eth)).status_code == 201
    assert await engine.drain() == 4
    await engine.ctx.lag.poll_once()
    assert (await engine.post(limit_order())).status_code == 201
    assert 'orders_rejected_total{reason="overloaded"} 1.0' in (await engine.client.get("/metrics")).text


async def test_503_not_500_when_redis_is_unreachable(make_engine: EngineFactory) -> None:
    engine = await make_engine(prepare=False, redis_url="redis://127.0.0.1:1/0")
    response = await engine.post(limit_order())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert (await engine.get("00000000-0000-7000-8000-000000000000")).status_code == 503
    assert (await engine.client.get("/orderbook?instrument=BTC-USD")).status_code == 503
    ready = await engine.client.get("/readyz")
    assert (ready.status_code, ready.json()["missing"]) == (503, ["redis"])


async def test_auth_off_treats_every_request_as_admin(make_engine: EngineFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    engine = await make_engine(auth_mode="off")
    assert any("AUTH_MODE=off" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    response = await engine.post(limit_order(client_id="anyone"), headers={})
    assert response.status_code == 201
    assert (await engine.get(response.json()["order_id"], headers={})).status_code == 200


async def test_the_background_poll_flags_an_overloaded_instrument(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_matcher_lag=0, lag_poll_interval_s=0.01)
    assert (await engine.post(limit_order())).status_code == 201
    for _ in range(200):
        if engine.ctx.lag.overloaded("BTC-USD"):
            break
        await asyncio.sleep(0.01)
    assert (await engine.post(limit_order())).status_code == 503
