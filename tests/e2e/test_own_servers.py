"""`make run` without REDIS_URL / DATABASE_URL runs on durable servers of its own, with the shipped clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.e2e.engine import RunningEngine, engine_env, running_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

B = {"Authorization": "Bearer demo-key-B"}
SELL = {"client_id": "client-B", "instrument": "BTC-USD", "side": "sell", "type": "limit", "price": "50000.00",
        "quantity": "0.2"}


@pytest.fixture
def own(key_prefix: str, own_run_dir: Path) -> Iterator[RunningEngine]:
    with running_engine(engine_env(key_prefix, None, None, own_run_dir), own_run_dir) as engine:
        yield engine


async def test_orders_land_on_the_engines_own_durable_servers(own: RunningEngine, redis: Redis,
                                                               key_prefix: str, own_run_dir: Path) -> None:
    async with httpx.AsyncClient(base_url=own.ingest, timeout=10) as http:
        placed = await http.post("/orders", json=SELL, headers=B)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["order_id"]

    assert own.make("redis-cli", "ARGS=CONFIG GET appendonly").split() == ["appendonly", "yes"]
    assert own.make("redis-cli", "ARGS=CONFIG GET appendfsync").split() == ["appendfsync", "always"]
    stream = f"{key_prefix}orders:{{BTC-USD}}"
    assert own.make("redis-cli", f"ARGS=XLEN {stream}").strip() == "1"
    own.wait_until(lambda: order_id in own.make("psql", "ARGS=-tA -c 'select order_id from orders'"), 15,
                   "the order in the engine's own PostgreSQL")
    # The machine's shared Redis (the tests' own) never saw the engine.
    assert [key async for key in redis.scan_iter(match=f"{key_prefix}*")] == []

    data = own_run_dir / "data"
    assert (data / "redis.version").read_text().startswith("valkey")
    assert (data / "postgres" / "PG_VERSION").is_file()
    assert any((data / "redis").rglob("*.aof"))
    refused = own.run_make("clean-data")
    assert refused.returncode != 0 and "make stop" in refused.stderr
    assert data.is_dir()

    own.make("stop")
    assert own.process is not None and own.process.wait(60) == 0  # `make run` ends with the engine
    assert "removed" in own.make("clean-data")
    assert not data.exists()
