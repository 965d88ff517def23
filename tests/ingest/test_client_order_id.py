"""client_order_id is unique per client: a second order with the same reference is refused, atomically."""

from __future__ import annotations

import asyncio

from tests.ingest.conftest import BROKER, KEY_A, Engine, limit_order


async def test_client_order_id_names_one_order_per_client(engine: Engine) -> None:
    first = await engine.post(limit_order(client_order_id="my-1", idempotency_key="k-1"), headers=KEY_A)
    assert first.status_code == 201 and first.json()["client_order_id"] == "my-1"

    again = await engine.post(limit_order(client_order_id="my-1", price="49000.00"), headers=KEY_A)
    assert again.status_code == 409
    body = again.json()
    assert body["error"] == "duplicate_client_order_id"
    assert body["details"] == [{"field": "client_order_id", "message": "already used by this client"}]
    assert first.json()["order_id"] in body["message"]

    # The idempotent repeat of the first request is still a replay, not a duplicate.
    replay = await engine.post(limit_order(client_order_id="my-1", idempotency_key="k-1"), headers=KEY_A)
    assert replay.status_code == 200 and replay.json() == first.json()

    # Another client may use the same reference.
    other = await engine.post(limit_order(client_id="client-B", client_order_id="my-1"), headers=BROKER)
    assert other.status_code == 201
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 2


async def test_concurrent_orders_with_one_client_order_id_place_one(engine: Engine) -> None:
    answers = await asyncio.gather(*[
        engine.post(limit_order(client_order_id="same", price=f"{49000 + n}.00"), headers=KEY_A) for n in range(10)])
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 1
