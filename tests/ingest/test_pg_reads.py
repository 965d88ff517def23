"""GET /trades and GET /orders/{id} for orders Redis no longer holds, from PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import BROKER, KEY_A, KEY_B, Engine, EngineFactory
from tests.persister.runner import workers
from tests.persister.workload import settings_for


@pytest.fixture
async def persisted_engine(make_engine: EngineFactory, db_url: str) -> AsyncIterator[Engine]:
    yield await make_engine(database_url=db_url)


async def _persist(engine: Engine, redis_url: str, db_url: str, instruments: Instruments, db: AsyncEngine) -> None:
    """Run a persister until PostgreSQL holds every trade and event of the test's streams."""
    settings = settings_for(redis_url, engine.settings.key_prefix, db_url, TWO_INSTRUMENTS)
    trades = sum([await engine.redis.xlen(k.trades) for k in engine.keys.values()])
    events = sum([await engine.redis.xlen(k.events) for k in engine.keys.values()])
    async with workers(settings, instruments, 1):
        for _ in range(200):
            async with db.connect() as conn:
                stored_trades = (await conn.exec_driver_sql("SELECT count(*) FROM trades")).scalar_one()
                stored_events = (await conn.exec_driver_sql("SELECT count(*) FROM order_events")).scalar_one()
            if (stored_trades, stored_events) == (trades, events):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"persister did not catch up: {stored_trades}/{trades} trades")


async def test_trades_newest_first_with_exact_decimals(persisted_engine: Engine, redis_url: str, db_url: str,
                                                       instruments: Instruments, db: AsyncEngine) -> None:
    engine = persisted_engine
    await engine.place(client_id="client-B", side="sell", price="50000.10", quantity="0.3")
    await engine.place(client_id="client-B", side="sell", price="50000.20", quantity="0.3")
    await engine.place(client_id="client-A", side="buy", price="50001", quantity="0.5")
    await engine.place(client_id="client-A", instrument="ETH-USD", side="sell", price="3000.05", quantity="1")
    await engine.place(client_id="client-B", instrument="ETH-USD", side="buy", price="3000.10", quantity="0.25")
    await engine.drain()
    await _persist(engine, redis_url, db_url, instruments, db)

    answer = await engine.client.get("/trades", params={"instrument": "BTC-USD", "limit": "10"})
    assert answer.status_code == 200
    trades = answer.json()
    assert [(t["seq"], t["price"], t["quantity"], t["taker_side"]) for t in trades] == [
        (2, "50000.20", "0.2", "buy"), (1, "50000.10", "0.3", "buy")]
    assert set(trades[0]) == {"trade_id", "seq", "instrument", "price", "quantity", "taker_side",
                              "buy_order_id", "sell_order_id", "executed_at"}
    assert trades[0]["executed_at"].endswith("Z") and len(trades[0]["executed_at"]) == 24

    everything = (await engine.client.get("/trades")).json()
    assert sorted((t["instrument"], t["price"], t["quantity"]) for t in everything) == [
        ("BTC-USD", "50000.10", "0.3"), ("BTC-USD", "50000.20", "0.2"), ("ETH-USD", "3000.05", "0.25")]
    assert len((await engine.client.get("/trades", params={"limit": "1"})).json()) == 1


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"instrument": "DOGE-USD"}, "instrument"),
])
async def test_bad_trades_queries_are_422(engine: Engine, params: dict[str, str], field: str) -> None:
    answer = await engine.client.get("/trades", params=params)
    assert answer.status_code == 422
    assert answer.json()["details"][0]["field"] == field


async def test_trades_answer_503_while_postgres_is_unreachable(make_engine: EngineFactory) -> None:
    engine = await make_engine(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    answer = await engine.client.get("/trades")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    # Orders are still accepted: they need Redis only.
    assert (await engine.post({"client_id": "client-A", "instrument": "BTC-USD", "side": "buy",
                               "type": "limit", "price": "1", "quantity": "1"})).status_code == 201


async def test_order_no_longer_in_redis_is_read_from_postgres(persisted_engine: Engine, redis_url: str,
                                                              db_url: str, instruments: Instruments,
                                                              db: AsyncEngine, redis: Redis) -> None:
    engine = persisted_engine
    sell = await engine.place(client_id="client-B", side="sell", price="100.00", quantity="0.3")
    buy = await engine.place(client_id="client-A", side="buy", price="100.05", quantity="0.5", time_in_force="IOC")
    await engine.drain()
    live = (await engine.get(buy["order_id"], headers=KEY_A)).json()
    await _persist(engine, redis_url, db_url, instruments, db)
    await redis.hdel(engine.keys["BTC-USD"].order_state, buy["order_id"], sell["order_id"])

    stored = await engine.get(buy["order_id"], headers=KEY_A)
    assert stored.status_code == 200
    assert stored.json() == live
    assert stored.json()["status"] == "cancelled" and stored.json()["average_price"] == "100.00"
    assert (await engine.get(buy["order_id"], headers=KEY_B)).status_code == 403
    assert (await engine.get(sell["order_id"], headers=BROKER)).json()["status"] == "filled"
    assert (await engine.get("never-placed", headers=BROKER)).status_code == 404
    cancel = await engine.client.post(f"/orders/{sell['order_id']}/cancel", headers=KEY_B)
    assert cancel.status_code == 409 and cancel.json()["status"] == "filled"
