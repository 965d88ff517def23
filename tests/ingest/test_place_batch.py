"""POST /orders/batch against real Redis: each order answered as POST /orders answers it alone, one accept.lua
call per instrument, list order on the stream, idempotency within and across batches, roles, rate limits
counting orders, the request-level answers; batch orders match and persist like single ones."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.wire import fields_to_dict
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import BROKER, KEY_A, KEY_B, Engine, EngineFactory, limit_order
from tests.persister.runner import workers
from tests.persister.workload import settings_for

VOLATILE = ("order_id", "created_at", "updated_at")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def post_batch(engine: Engine, orders: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return await engine.client.post("/orders/batch", json={"orders": orders},
                                    headers=BROKER if headers is None else headers)


async def results_of(engine: Engine, orders: Any, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = await post_batch(engine, orders, headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"results"} and len(body["results"]) == len(orders)
    results: list[dict[str, Any]] = body["results"]
    return results


def stable(body: dict[str, Any]) -> dict[str, Any]:
    """An order body without what differs between two placements of the same order."""
    return {k: v for k, v in body.items() if k not in VOLATILE}


def eth(**fields: Any) -> dict[str, Any]:
    return limit_order(**{"instrument": "ETH-USD", "price": "3000.05", "quantity": "0.01", **fields})


def without_ids(error: dict[str, Any]) -> dict[str, Any]:
    """An error whose message may name an order id (duplicate_client_order_id), with the id left out."""
    return {**error, "message": UUID.sub("<id>", error["message"])}


async def stream_ids(engine: Engine, symbol: str) -> list[str]:
    return [fields_to_dict(f)["order_id"] for _, f in await engine.redis.xrange(engine.keys[symbol].orders)]


MIXED: list[Any] = [
    limit_order(),
    limit_order(price="50000.001"),  # 422: not a multiple of the tick
    5,  # 400: not an object
    limit_order(client_id="client-B"),  # 403 for demo-key-A
    limit_order(instrument="NOPE-USD"),  # 422: unknown instrument
    limit_order(surprise=1),  # 422: unknown field
    limit_order(type="market"),  # 422: a market order takes no price
    limit_order(client_order_id="mine"),
    limit_order(client_order_id="mine"),  # 409: duplicate client_order_id
    limit_order(idempotency_key="k-1"),
    limit_order(idempotency_key="k-1"),  # 200: replay
    limit_order(idempotency_key="k-1", quantity="0.7"),  # 409: idempotency conflict
    eth(),
    {"client_id": "client-A", "instrument": "BTC-USD", "side": "sell", "type": "market", "quantity": 1e-8},
    [limit_order()],  # 400: an array
    "x" * 20_000,  # 413: over MAX_BODY_BYTES on its own
]


async def test_each_order_gets_exactly_what_post_orders_answers_it_alone(make_engine: EngineFactory,
                                                                         key_prefix: str) -> None:
    batch = await make_engine()
    singles = await make_engine(key_prefix=key_prefix + "single:")
    results = await results_of(batch, MIXED, KEY_A)
    for order, result in zip(MIXED, results, strict=True):
        alone = await singles.client.post("/orders", content=json.dumps(order), headers={
            **KEY_A, "Content-Type": "application/json"})
        assert result["status"] == alone.status_code, (order, result, alone.text)
        if alone.status_code in (200, 201):
            assert set(result) == {"status", "order"}
            assert stable(result["order"]) == stable(alone.json())
        else:
            assert set(result) == {"status", "error"}
            error = dict(result["error"])
            if alone.status_code in (429, 503):
                assert error.pop("retry_after_s") == int(alone.headers["retry-after"])
            assert without_ids(error) == without_ids(alone.json())
    assert [r["status"] for r in results] == [201, 422, 400, 403, 422, 422, 422, 201, 409, 201, 200, 409, 201, 201,
                                              400, 413]
    # The replay is the first answer, byte for byte; each accepted order is on its instrument's stream once.
    assert results[10]["order"] == results[9]["order"]
    btc = [r["order"]["order_id"] for r in results if r["status"] == 201 and r["order"]["instrument"] == "BTC-USD"]
    assert await stream_ids(batch, "BTC-USD") == btc
    assert await stream_ids(batch, "ETH-USD") == [results[12]["order"]["order_id"]]
    metrics = (await batch.client.get("/metrics")).text
    assert 'orders_received_total{instrument="BTC-USD"} 4.0' in metrics
    assert 'orders_received_total{instrument="ETH-USD"} 1.0' in metrics
    assert 'orders_rejected_total{reason="validation"} 4.0' in metrics
    assert 'orders_rejected_total{reason="bad_request"} 2.0' in metrics
    assert 'orders_rejected_total{reason="forbidden"} 1.0' in metrics
    assert "order_batch_latency_seconds_count 1.0" in metrics
    assert "order_latency_seconds_count 0.0" in metrics


async def test_one_lua_call_per_instrument_and_list_order_on_each_stream(engine: Engine) -> None:
    orders = [limit_order(quantity=f"0.{n + 1}") if n % 3 else eth(client_order_id=f"e{n}") for n in range(30)]
    sent = engine.ctx.batcher.commands_sent
    results = await results_of(engine, orders)
    assert engine.ctx.batcher.commands_sent - sent == 2  # one EVALSHA for BTC-USD, one for ETH-USD
    assert [r["status"] for r in results] == [201] * 30
    ids = [r["order"]["order_id"] for r in results]
    assert await stream_ids(engine, "BTC-USD") == [i for n, i in enumerate(ids) if n % 3]
    assert await stream_ids(engine, "ETH-USD") == [i for n, i in enumerate(ids) if n % 3 == 0]
    assert len(set(ids)) == 30


async def test_the_largest_batch_allowed_is_one_call(make_engine: EngineFactory) -> None:
    # BATCH_MAX_ORDERS' upper bound: 1,000 orders in one accept.lua call (3,003 keys, one HSET of 2,000 values).
    engine = await make_engine(batch_max_orders=1000, rate_limit_burst=1000)
    orders = [limit_order(client_id=f"c{n % 7}", client_order_id=f"o{n}", idempotency_key=f"k{n}") for n in range(1000)]
    sent = engine.ctx.batcher.commands_sent
    results = await results_of(engine, orders)
    assert engine.ctx.batcher.commands_sent - sent == 1
    assert [r["status"] for r in results] == [201] * 1000
    assert await stream_ids(engine, "BTC-USD") == [r["order"]["order_id"] for r in results]
    assert await engine.redis.hlen(engine.keys["BTC-USD"].order_state) == 1000


async def test_a_whole_batch_again_is_replayed_and_places_nothing(engine: Engine) -> None:
    orders = [limit_order(idempotency_key=f"k{n}", quantity=f"0.{n + 1}") for n in range(5)]
    orders.append(eth(idempotency_key="k0"))
    first = await results_of(engine, orders)
    assert [r["status"] for r in first] == [201] * 6  # the key is scoped to client and instrument: k0 twice is two
    again = await results_of(engine, orders)
    assert [r["status"] for r in again] == [200] * 6
    assert [r["order"] for r in again] == [r["order"] for r in first]
    assert len(await stream_ids(engine, "BTC-USD")) == 5 and len(await stream_ids(engine, "ETH-USD")) == 1
    # A single POST with the same key and body gets the batch's answer too.
    single = await engine.post(orders[2], headers=BROKER)
    assert (single.status_code, single.json()) == (200, first[2]["order"])


async def test_the_same_key_twice_in_one_batch_is_a_replay_or_a_conflict(engine: Engine) -> None:
    results = await results_of(engine, [limit_order(idempotency_key="dup"), limit_order(idempotency_key="dup"),
                                        limit_order(idempotency_key="dup", side="sell")])
    assert [r["status"] for r in results] == [201, 200, 409]
    assert results[1]["order"] == results[0]["order"]
    assert results[2]["error"] == {"error": "idempotency_conflict",
                                   "message": "idempotency key 'dup' was used with a different body", "details": []}
    assert len(await stream_ids(engine, "BTC-USD")) == 1


async def test_a_trader_acting_for_another_client_gets_that_orders_403(engine: Engine) -> None:
    results = await results_of(engine, [limit_order(client_id="client-B"), limit_order(client_id="client-B"),
                                        limit_order(client_id="client-A")], KEY_B)
    assert [r["status"] for r in results] == [201, 201, 403]
    assert results[2]["error"] == {"error": "forbidden", "details": [],
                                   "message": "this key acts for 'client-B' only, not 'client-A'"}


async def test_rate_limits_count_orders_not_requests(make_engine: EngineFactory) -> None:
    engine = await make_engine(rate_limit_per_sec=1, rate_limit_burst=5)
    results = await results_of(engine, [limit_order(quantity=f"0.{n + 1}") for n in range(10)], KEY_A)
    assert [r["status"] for r in results] == [201] * 5 + [429] * 5
    assert all(r["error"] == {"error": "rate_limited", "message": "client 'client-A' is over its rate limit",
                              "details": [], "retry_after_s": 1} for r in results[5:])
    assert len(await stream_ids(engine, "BTC-USD")) == 5
    # Another client's bucket is its own, within the same batch.
    mixed = await results_of(engine, [limit_order(), limit_order(client_id="client-9")], BROKER)
    assert [r["status"] for r in mixed] == [429, 201]
    metrics = (await engine.client.get("/metrics")).text
    assert 'orders_rejected_total{reason="rate_limited"} 6.0' in metrics


async def test_the_api_keys_bucket_counts_each_order_and_a_refusal_costs_nothing(make_engine: EngineFactory) -> None:
    engine = await make_engine(api_key_rate_limit_per_sec=1, api_key_rate_limit_burst=3, rate_limit_burst=10)
    results = await results_of(engine, [limit_order(client_id=f"c{n}") for n in range(5)])
    assert [r["status"] for r in results] == [201, 201, 201, 429, 429]
    assert results[3]["error"] == {"error": "rate_limited", "message": "this API key is over its rate limit",
                                   "details": [], "retry_after_s": 1}
    # The refused orders took nothing from their clients' buckets.
    alone = await engine.post(limit_order(client_id="c3"), headers=BROKER)
    assert (alone.status_code, alone.headers["ratelimit-remaining"]) == (429, "10")


async def test_an_overloaded_instrument_refuses_its_orders_only(engine: Engine) -> None:
    engine.ctx.lag._overloaded = frozenset({"BTC-USD"})
    results = await results_of(engine, [limit_order(), eth()])
    assert [r["status"] for r in results] == [503, 201]
    assert results[0]["error"] == {"error": "unavailable", "message": "the BTC-USD matcher is behind, retry shortly",
                                   "details": [], "retry_after_s": 1}


async def test_redis_unreachable_is_each_orders_503(engine: Engine) -> None:
    await engine.ctx.batcher.close()
    results = await results_of(engine, [limit_order(), eth(), 7])
    assert [r["status"] for r in results] == [503, 503, 400]
    assert results[0]["error"] == {"error": "unavailable", "details": [], "retry_after_s": 1,
                                   "message": "the order store (Redis) is unavailable, retry shortly"}


async def test_request_level_answers(make_engine: EngineFactory) -> None:
    engine = await make_engine(batch_max_orders=3, batch_max_body_bytes=2000)
    client = engine.client

    async def post(content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await client.post("/orders/batch", content=content, headers={**BROKER, **(headers or {})})

    def details(response: httpx.Response) -> list[dict[str, str]]:
        assert response.status_code == 422, response.text
        found: list[dict[str, str]] = response.json()["details"]
        return found

    big = await post(json.dumps({"orders": [limit_order(client_order_id="x" * 60)] * 20}))
    assert (big.status_code, big.json()["error"]) == (413, "payload_too_large")
    # 413 before 401
    assert (await client.post("/orders/batch", content=b"x" * 3000)).status_code == 413
    unauthorised = await client.post("/orders/batch", json={"orders": [limit_order()]})
    assert (unauthorised.status_code, unauthorised.headers["www-authenticate"]) == (401, "Bearer")
    assert (await post(b'{"orders": [')).json() == {"error": "bad_request", "message": "the body is not valid JSON",
                                                    "details": []}
    not_object = await post(b"[1]")
    assert (not_object.status_code, not_object.json()["message"]) == (400, "the body must be a JSON object")
    assert details(await post(b"{}"))[0]["field"] == "orders"
    assert details(await post(b'{"orders": {}}'))[0]["field"] == "orders"
    assert details(await post(b'{"orders": []}')) == [{"field": "orders", "message": "must hold at least 1 order"}]
    assert details(await post(json.dumps({"orders": [limit_order()] * 4}))) == [
        {"field": "orders", "message": "must hold at most 3 orders (BATCH_MAX_ORDERS), not 4"}]
    assert details(await post(b'{"orders": [1], "more": 2}'))[0]["field"] == "more"
    header = await post(json.dumps({"orders": [limit_order()]}), {"Idempotency-Key": "k"})
    assert details(header)[0]["field"] == "Idempotency-Key"
    # Deep nesting inside an order is that order's 400, or the request's where it is too deep to skip; never a 500.
    deep = await post(b'{"orders": [' + b"[" * 500 + b"]" * 500 + b"]}")
    assert deep.status_code == 200 and deep.json()["results"][0]["status"] == 400
    wide = await make_engine()  # the default 1 MiB
    deeper = await wide.client.post("/orders/batch", content=b'{"orders": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
                                headers=BROKER)
    assert (deeper.status_code, deeper.json()["message"]) == (400, "the body nests too deeply")
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 0
    metrics = (await client.get("/metrics")).text
    assert 'orders_rejected_total{reason="too_large"} 2.0' in metrics
    assert 'orders_received_total{instrument="BTC-USD"}' not in metrics


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_on_the_batch_are_405_allowing_post(engine: Engine, method: str) -> None:
    response = await engine.client.request(method, "/orders/batch", headers=KEY_A)
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    assert response.json() == {"error": "method_not_allowed", "message": "Method Not Allowed", "details": []}


async def test_batch_orders_match_and_persist_like_single_ones(make_engine: EngineFactory, redis_url: str,
                                                               db_url: str, instruments: Instruments,
                                                               db: AsyncEngine) -> None:
    engine = await make_engine(database_url=db_url)
    results = await results_of(engine, [
        limit_order(client_id="client-B", side="sell", price="50000.10", quantity="0.3"),
        limit_order(client_id="client-B", side="sell", price="50000.20", quantity="0.3"),
        eth(client_id="client-B", side="sell"),
        limit_order(client_id="client-A", side="buy", price="50001", quantity="0.5"),
        eth(client_id="client-A", side="buy", price="3000.10"),
    ])
    assert [r["status"] for r in results] == [201] * 5
    await engine.drain()
    settings = settings_for(redis_url, engine.settings.key_prefix, db_url, TWO_INSTRUMENTS)
    async with workers(settings, instruments, 1):
        for _ in range(200):
            async with db.connect() as conn:
                trades = (await conn.exec_driver_sql(
                    "SELECT instrument, price::text, quantity::text FROM trades ORDER BY instrument, seq")).all()
                orders = (await conn.exec_driver_sql("SELECT count(*) FROM orders")).scalar_one()
            if len(trades) == 3 and orders == 5:
                break
            await asyncio.sleep(0.05)
    assert [tuple(t) for t in trades] == [("BTC-USD", "50000.10", "0.3"), ("BTC-USD", "50000.20", "0.2"),
                                          ("ETH-USD", "3000.05", "0.01")]
    buyer = (await engine.get(results[3]["order"]["order_id"])).json()
    assert (buyer["status"], buyer["filled_quantity"], buyer["average_price"]) == ("filled", "0.5", "50000.14")
