"""Rate limits through POST /orders against real Redis: the API key's bucket, the client's, RateLimit-* headers."""

from __future__ import annotations

import hashlib

import httpx

from tests.ingest.conftest import BROKER, KEY_A, KEY_B, Engine, EngineFactory, limit_order


def _rate_headers(response: httpx.Response) -> tuple[str, str, str]:
    h = response.headers
    return h["ratelimit-limit"], h["ratelimit-remaining"], h["ratelimit-reset"]


async def test_a_broker_key_cycling_client_ids_is_limited_by_its_own_bucket(make_engine: EngineFactory) -> None:
    engine = await make_engine(api_key_rate_limit_per_sec=1, api_key_rate_limit_burst=3)
    statuses = [(await engine.post(limit_order(client_id=f"client-{n}"), headers=BROKER)).status_code
                for n in range(3)]
    assert statuses == [201, 201, 201]
    # A fourth client id, never seen before, with a full client bucket of its own: the key's bucket refuses.
    response = await engine.post(limit_order(client_id="client-new"), headers=BROKER)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"error": "rate_limited", "message": "this API key is over its rate limit",
                               "details": []}
    # The refusal took nothing from that client's bucket (both are checked before either is taken from).
    assert _rate_headers(response) == ("1000", "1000", "0")
    # Another key's bucket is its own.
    assert (await engine.post(limit_order(), headers=KEY_A)).status_code == 201
    metrics = (await engine.client.get("/metrics")).text
    assert 'orders_rejected_total{reason="key_rate_limited"} 1.0' in metrics
    # Nothing was enqueued for the refused order.
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 4


async def test_the_key_bucket_is_named_by_the_keys_hash_never_the_key(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    assert (await engine.post(limit_order(client_id="client-9"), headers=BROKER)).status_code == 201
    key_id = hashlib.sha256(b"demo-broker").hexdigest()[:16]
    buckets = [k async for k in engine.redis.scan_iter(match=f"{engine.settings.key_prefix}keyrate:*")]
    assert buckets == [engine.keys["BTC-USD"].key_rate_bucket(key_id).encode()]
    assert b"demo-broker" not in buckets[0]


async def test_the_key_bucket_is_per_instrument(make_engine: EngineFactory) -> None:
    # Redis Cluster: accept.lua touches only the instrument's slot, so a key has a bucket per instrument.
    engine = await make_engine(api_key_rate_limit_per_sec=1, api_key_rate_limit_burst=1)
    assert (await engine.post(limit_order(client_id="c1"), headers=BROKER)).status_code == 201
    assert (await engine.post(limit_order(client_id="c2"), headers=BROKER)).status_code == 429
    eth = limit_order(client_id="c3", instrument="ETH-USD", price="3000.05", quantity="0.01")
    assert (await engine.post(eth, headers=BROKER)).status_code == 201


async def test_rate_limit_headers_count_down_on_every_order_answer(make_engine: EngineFactory) -> None:
    engine = await make_engine(rate_limit_per_sec=1, rate_limit_burst=5)
    first = await engine.post(limit_order(), headers={**KEY_A, "Idempotency-Key": "k1"})
    assert first.status_code == 201
    # Reset: whole seconds until the bucket is full again, at 1 token/s.
    assert _rate_headers(first) == ("5", "4", "1")
    replay = await engine.post(limit_order(), headers={**KEY_A, "Idempotency-Key": "k1"})
    assert (replay.status_code, _rate_headers(replay)) == (200, ("5", "3", "2"))
    conflict = await engine.post(limit_order(quantity="0.7"), headers={**KEY_A, "Idempotency-Key": "k1"})
    assert (conflict.status_code, _rate_headers(conflict)) == (409, ("5", "2", "3"))
    await engine.post(limit_order(client_order_id="mine"))
    duplicate = await engine.post(limit_order(client_order_id="mine"))
    assert (duplicate.status_code, _rate_headers(duplicate)) == (409, ("5", "0", "5"))
    refused = await engine.post(limit_order())
    assert refused.status_code == 429
    assert (refused.headers["retry-after"], _rate_headers(refused)) == ("1", ("5", "0", "5"))
    # Another client's bucket, another count.
    other = await engine.post(limit_order(client_id="client-B"), headers=KEY_B)
    assert (other.status_code, _rate_headers(other)) == (201, ("5", "4", "1"))


async def test_the_default_limit_is_announced_and_refusals_before_the_bucket_carry_none(engine: Engine) -> None:
    response = await engine.post(limit_order())
    assert _rate_headers(response) == ("1000", "999", "1")
    # A 422 never reached the bucket: it took no token and says nothing about it.
    invalid = await engine.post(limit_order(price="1.001"))
    assert invalid.status_code == 422
    assert "ratelimit-remaining" not in invalid.headers


async def test_zero_turns_the_key_bucket_off(make_engine: EngineFactory) -> None:
    engine = await make_engine(api_key_rate_limit_per_sec=0, api_key_rate_limit_burst=1)
    statuses = [(await engine.post(limit_order(client_id=f"client-{n}"), headers=BROKER)).status_code
                for n in range(5)]
    assert statuses == [201] * 5
    assert [k async for k in engine.redis.scan_iter(match=f"{engine.settings.key_prefix}keyrate:*")] == []


async def test_zero_turns_the_client_bucket_off_and_its_headers_with_it(make_engine: EngineFactory) -> None:
    engine = await make_engine(rate_limit_per_sec=0, api_key_rate_limit_per_sec=1, api_key_rate_limit_burst=2)
    responses = [await engine.post(limit_order()) for _ in range(3)]
    assert [r.status_code for r in responses] == [201, 201, 429]
    assert all("ratelimit-limit" not in r.headers for r in responses)
    assert responses[2].headers["retry-after"] == "1"


async def test_auth_off_has_no_key_bucket(make_engine: EngineFactory) -> None:
    engine = await make_engine(auth_mode="off", api_key_rate_limit_per_sec=1, api_key_rate_limit_burst=1)
    statuses = [(await engine.post(limit_order(client_id=f"client-{n}"), headers={})).status_code
                for n in range(3)]
    assert statuses == [201] * 3
