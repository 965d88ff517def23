"""Idempotent acceptance (accept.lua): replays, conflicts, "same body" after validation, concurrency."""

from __future__ import annotations

import asyncio
import json

from services.common.redis_batch import pack_args
from services.ingest.accept import Limits, packed_script_args, script_args
from services.ingest.place_order import placement_of
from services.ingest.validation import decode_order, validate_order
from tests.ingest.conftest import BROKER, KEY_A, KEY_B, Engine, limit_order


async def test_same_key_same_body_replays_the_first_answer(engine: Engine) -> None:
    first = await engine.post(limit_order(idempotency_key="order-1"))
    again = await engine.post(limit_order(idempotency_key="order-1"))
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 1
    assert "idempotent_replays_total 1.0" in (await engine.client.get("/metrics")).text


async def test_same_values_in_another_spelling_are_the_same_body(engine: Engine) -> None:
    first = await engine.post(limit_order(idempotency_key="k", price=50000.1, quantity=0.5))
    spelled = limit_order(price="50000.10", quantity="5e-1", time_in_force="GTC", post_only=False)
    again = await engine.client.post("/orders", json=spelled, headers={**KEY_A, "Idempotency-Key": "k"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.content == first.content


async def test_same_key_different_body_is_409(engine: Engine) -> None:
    assert (await engine.post(limit_order(idempotency_key="k"))).status_code == 201
    response = await engine.post(limit_order(idempotency_key="k", quantity="0.6"))
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_conflict"
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 1


async def test_keys_are_scoped_per_client_and_instrument(engine: Engine) -> None:
    assert (await engine.post(limit_order(idempotency_key="k"))).status_code == 201
    other_client = limit_order(idempotency_key="k", client_id="client-B")
    assert (await engine.post(other_client, KEY_B)).status_code == 201
    eth = limit_order(idempotency_key="k", instrument="ETH-USD", price="3000", quantity="1")
    assert (await engine.post(eth)).status_code == 201
    # Scoped by the body's client, whichever API key sends it.
    assert (await engine.post(limit_order(idempotency_key="k"), BROKER)).status_code == 200


async def test_concurrent_duplicates_make_exactly_one_order(engine: Engine) -> None:
    responses = await asyncio.gather(*(
        engine.client.post("/orders", json=limit_order(), headers={**KEY_A, "Idempotency-Key": "dup-1"})
        for _ in range(20)
    ))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201]
    assert len({r.content for r in responses}) == 1
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 1
    assert await engine.drain() == 1
    order_id = responses[0].json()["order_id"]
    assert (await engine.get(order_id)).json()["status"] == "open"


async def test_records_expire_after_the_ttl(engine: Engine) -> None:
    assert (await engine.post(limit_order(idempotency_key="ttl"))).status_code == 201
    ttl = await engine.redis.ttl(engine.keys["BTC-USD"].idempotency("client-A", "ttl"))
    assert 86_390 < ttl <= 86_400


async def test_keys_with_the_separator_in_them_never_collide_across_clients(engine: Engine) -> None:
    # Once one Redis key ("idem:{BTC-USD}:a:b:c"): the second order got 409 idempotency_conflict.
    first = await engine.post(limit_order(client_id="a:b", idempotency_key="c"), BROKER)
    second = await engine.post(limit_order(client_id="a", idempotency_key="b:c", quantity="0.6"), BROKER)
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert first.json()["order_id"] != second.json()["order_id"]
    # Each client's key still replays its own order.
    again = await engine.post(limit_order(client_id="a", idempotency_key="b:c", quantity="0.6"), BROKER)
    assert again.status_code == 200 and again.content == second.content
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 2


def test_packed_arguments_are_the_declared_keys_and_argv_in_resp(engine: Engine) -> None:
    # packed_script_args (the hot path) builds the RESP itself: it must be exactly script_args, packed.
    keys = engine.ctx.keys["BTC-USD"]
    instruments = engine.ctx.instruments
    orders = [validate_order(decode_order(json.dumps(limit_order(**fields)).encode()), instruments, key)
              for fields, key in (({}, None), ({"client_order_id": "c:1", "type": "market", "price": None}, "k:1"),
                                  ({"client_id": "client-B", "post_only": True}, "k2"))]
    placements = [placement_of(order, 1_700_000_000_000 + i) for i, order in enumerate(orders)]
    for limits in (Limits(rate_per_sec=5, burst=6, key_id="kid", key_rate_per_sec=7, key_burst=8, overloaded=True,
                          idempotency_ttl_s=9),
                   Limits(rate_per_sec=0, burst=1, key_id="", key_rate_per_sec=7, key_burst=8, overloaded=False,
                          idempotency_ttl_s=60)):
        for some in (placements[:1], placements):
            script_keys, argv = script_args(keys, some, limits)
            key_count, packed, count = packed_script_args(keys, some, limits)
            assert (key_count, count) == (len(script_keys), len(script_keys) + len(argv))
            assert packed == pack_args((*script_keys, *argv))


async def test_201_and_replay_headers_are_those_of_a_starlette_response_in_order(engine: Engine) -> None:
    rate = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] if engine.ctx.rate_limit_limit else []
    first = await engine.post(limit_order(idempotency_key="headers-1"), headers=BROKER)
    again = await engine.post(limit_order(idempotency_key="headers-1"), headers=BROKER)
    order_id = first.json()["order_id"]
    assert [name.decode() for name, _ in first.headers.raw] == [
        "location", *rate, "content-length", "content-type"]
    assert [name.decode() for name, _ in again.headers.raw] == [
        "idempotent-replayed", "location", *rate, "content-length", "content-type"]
    for response in (first, again):
        assert response.headers["location"] == f"/orders/{order_id}"
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(response.content))
