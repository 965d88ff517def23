"""scripts/upgrade_redis_keys.py: records written under the old key shape are found again after the upgrade."""

from __future__ import annotations

from typing import Any

import httpx

from scripts.upgrade_redis_keys import upgrade
from tests.ingest.conftest import BROKER, Engine, limit_order


async def _to_old_shape(engine: Engine, client_id: str, idempotency_key: str, client_order_id: str) -> None:
    """Rename the records ingest just wrote to the names the previous version gave them."""
    keys = engine.keys["BTC-USD"]
    old_head = f"{keys.prefix}%s:{{BTC-USD}}:{client_id}:"
    await engine.redis.rename(keys.idempotency(client_id, idempotency_key), old_head % "idem" + idempotency_key)
    await engine.redis.rename(keys.client_order_id(client_id, client_order_id), old_head % "coid" + client_order_id)


async def test_old_records_are_moved_with_their_ttl_and_found_again(engine: Engine) -> None:
    keys = engine.keys["BTC-USD"]
    written: dict[tuple[str, str], tuple[dict[str, Any], httpx.Response]] = {}
    for client_id, key in (("a:b", "c"), ("a", "x:y"), ("1", "1:k")):
        body = limit_order(client_id=client_id, idempotency_key=key, client_order_id=key)
        answer = await engine.post(body, BROKER)
        assert answer.status_code == 201, answer.text
        written[client_id, key] = (body, answer)
        await _to_old_shape(engine, client_id, key, key)
    # Under the old names the new ingest does not find them: a retry would be a new order.
    assert await engine.redis.get(keys.idempotency("a", "x:y")) is None

    counts = await upgrade(engine.redis, keys)
    assert (counts.moved, counts.unresolved) == (4, 0)  # client "1" with "1:k": read as the new shape would be
    assert counts.current == 2
    assert 0 < await engine.redis.ttl(keys.idempotency("a:b", "c")) <= engine.settings.idempotency_ttl_s
    for (client_id, _key), (body, first) in written.items():
        if client_id == "1":
            continue
        again = await engine.post(body, BROKER)
        assert again.status_code == 200 and again.content == first.content, (client_id, again.text)
        reused = await engine.post({**body, "idempotency_key": "fresh", "price": "49000.00"}, BROKER)
        assert reused.status_code == 409 and reused.json()["error"] == "duplicate_client_order_id"
        assert first.json()["order_id"] in reused.text

    rerun = await upgrade(engine.redis, keys)
    assert (rerun.moved, rerun.current, rerun.unresolved) == (0, 6, 0)
