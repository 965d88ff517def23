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
    assert first.json()["order_id"] in body["message"]  # the caller's own order

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


async def test_client_order_ids_with_the_separator_never_collide_nor_reveal_another_clients_order(
        engine: Engine) -> None:
    # Once one Redis key ("coid:{BTC-USD}:a:b:c"): the second order got 409 naming client "a:b"'s order id.
    theirs = await engine.post(limit_order(client_id="a:b", client_order_id="c"), BROKER)
    mine = await engine.post(limit_order(client_id="a", client_order_id="b:c"), BROKER)
    assert (theirs.status_code, mine.status_code) == (201, 201), mine.text
    assert mine.json()["client_order_id"] == "b:c" and mine.json()["client_id"] == "a"

    # A real duplicate names the caller's own order only, never the other client's.
    again = await engine.post(limit_order(client_id="a", client_order_id="b:c", price="49000.00"), BROKER)
    assert again.status_code == 409 and again.json()["error"] == "duplicate_client_order_id"
    assert mine.json()["order_id"] in again.text and theirs.json()["order_id"] not in again.text
