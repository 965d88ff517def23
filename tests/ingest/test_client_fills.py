"""GET /clients/{client_id}/fills: the client's side of its trades from PostgreSQL, newest first, with liquidity."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from services.common.times import iso
from tests.analytics.conftest import base_hour, trade, write
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine, EngineFactory
from tests.ingest.test_pg_reads import _persist

FIELDS = {"trade_id", "order_id", "instrument", "side", "liquidity", "price", "quantity", "executed_at"}


@pytest.fixture
async def persisted_engine(make_engine: EngineFactory, db_url: str) -> AsyncIterator[Engine]:
    yield await make_engine(database_url=db_url)


async def _fills(engine: Engine, client_id: str, headers: dict[str, str] = BROKER, **params: str) -> list[Any]:
    answer = await engine.client.get(f"/clients/{client_id}/fills", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    fills: list[Any] = answer.json()
    return fills


async def test_fills_of_matched_orders_with_maker_taker_and_a_self_trade(
        persisted_engine: Engine, redis_url: str, db_url: str, instruments: Instruments, db: AsyncEngine) -> None:
    engine = persisted_engine
    maker = await engine.place(client_id="client-B", side="sell", price="50000.10", quantity="0.3")
    await engine.drain()
    taker = await engine.place(client_id="client-A", side="buy", price="50000.10", quantity="0.5")
    await engine.drain()
    # client-A's rest (0.2 @ 50000.10) is taken by its own sell: a self-trade, A both maker and taker.
    own = await engine.place(client_id="client-A", side="sell", price="50000.00", quantity="0.2")
    eth = await engine.place(client_id="client-A", instrument="ETH-USD", side="sell", price="3000.05", quantity="1")
    await engine.drain()
    eth_taker = await engine.place(client_id="client-B", instrument="ETH-USD", side="buy", price="3000.10",
                                   quantity="0.25")
    await engine.drain()
    await _persist(engine, redis_url, db_url, instruments, db)

    fills_a = await _fills(engine, "client-A", KEY_A)
    assert all(set(f) == FIELDS for f in fills_a)
    assert [(f["instrument"], f["order_id"], f["side"], f["liquidity"], f["price"], f["quantity"])
            for f in fills_a] == [
        ("ETH-USD", eth["order_id"], "sell", "maker", "3000.05", "0.25"),
        ("BTC-USD", taker["order_id"], "buy", "maker", "50000.10", "0.2"),
        ("BTC-USD", own["order_id"], "sell", "taker", "50000.10", "0.2"),
        ("BTC-USD", taker["order_id"], "buy", "taker", "50000.10", "0.3"),
    ]
    # Both rows of the self-trade name one trade; executed_at is ISO-8601 with milliseconds, newest first.
    assert fills_a[1]["trade_id"] == fills_a[2]["trade_id"] != fills_a[3]["trade_id"]
    times = [f["executed_at"] for f in fills_a]
    assert times == sorted(times, reverse=True) and all(t.endswith("Z") and len(t) == 24 for t in times)

    fills_b = await _fills(engine, "client-B", KEY_B)
    assert [(f["order_id"], f["side"], f["liquidity"], f["quantity"]) for f in fills_b] == [
        (eth_taker["order_id"], "buy", "taker", "0.25"), (maker["order_id"], "sell", "maker", "0.3")]
    assert fills_b[1]["trade_id"] == fills_a[3]["trade_id"]

    only_eth = await _fills(engine, "client-A", instrument="ETH-USD")
    assert [f["order_id"] for f in only_eth] == [eth["order_id"]]
    assert await _fills(engine, "client-C", ADMIN) == []


@pytest.fixture
async def hand_made_app(make_engine: EngineFactory, db_url: str, db: AsyncEngine) -> AsyncIterator[Engine]:
    """Trades written as the persister writes them: client-P in 6 BTC trades a second apart, then 2 ETH."""
    b0 = base_hour()
    s = dt.timedelta(seconds=1)
    rows = [trade("BTC-USD", seq, b0 + seq * s, "50000.00", f"0.{seq}", "client-P", "client-Q")
            for seq in range(1, 7)]
    rows += [trade("ETH-USD", 1, b0 + 7 * s, "3000.05", "2", "client-Q", "client-P", "sell"),
             trade("ETH-USD", 2, b0 + 7 * s, "3000.10", "3", "client-P", "client-P")]
    await write(db, rows)
    yield await make_engine(prepare=False, database_url=db_url)


async def test_limit_and_end_page_back_in_time(hand_made_app: Engine) -> None:
    engine = hand_made_app
    everything = await _fills(engine, "client-P")
    # The self-trade ETH-USD 2 (two rows) and ETH-USD 1 share a millisecond: seq then side order them.
    assert [(f["trade_id"], f["side"], f["liquidity"]) for f in everything] == [
        ("ETH-USD-2", "buy", "taker"), ("ETH-USD-2", "sell", "maker"), ("ETH-USD-1", "sell", "taker"),
        *[(f"BTC-USD-{seq}", "buy", "taker") for seq in range(6, 0, -1)]]
    assert [f["order_id"] for f in everything[:3]] == ["o-2-b", "o-2-s", "o-1-s"]

    first = await _fills(engine, "client-P", limit="4")
    assert [f["trade_id"] for f in first] == ["ETH-USD-2", "ETH-USD-2", "ETH-USD-1", "BTC-USD-6"]
    page = await _fills(engine, "client-P", limit="2", end=first[-1]["executed_at"])
    assert [f["trade_id"] for f in page] == ["BTC-USD-5", "BTC-USD-4"]
    # end is exclusive, in epoch milliseconds as well as ISO-8601.
    moment = dt.datetime.fromisoformat(page[-1]["executed_at"].replace("Z", "+00:00"))
    epoch_ms = str(int(moment.timestamp() * 1000))
    assert [f["trade_id"] for f in await _fills(engine, "client-P", end=epoch_ms)] == [
        "BTC-USD-3", "BTC-USD-2", "BTC-USD-1"]
    assert [f["trade_id"] for f in await _fills(engine, "client-P", instrument="BTC-USD", limit="1")] == [
        "BTC-USD-6"]
    assert await _fills(engine, "client-P", end=iso(base_hour())) == []
    assert [f["price"] for f in await _fills(engine, "client-Q", instrument="ETH-USD")] == ["3000.05"]


async def test_roles_and_bad_parameters(engine: Engine) -> None:
    url = "/clients/client-A/fills"
    assert (await engine.client.get(url)).status_code == 401
    answer = await engine.client.get("/clients/client-B/fills", headers=KEY_A)
    assert (answer.status_code, answer.json()["error"]) == (403, "forbidden")
    assert (await engine.client.get("/clients/not%20an%20id/fills", headers=ADMIN)).status_code == 404
    for params, field in [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"),
                          ({"instrument": "DOGE-USD"}, "instrument"), ({"end": "yesterday"}, "end"),
                          ({"end": "999999999999999"}, "end")]:
        answer = await engine.client.get(url, params=params, headers=KEY_A)
        assert (answer.status_code, answer.json()["details"][0]["field"]) == (422, field), params


async def test_503_while_postgres_is_unreachable(make_engine: EngineFactory) -> None:
    engine = await make_engine(prepare=False, database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    answer = await engine.client.get("/clients/client-A/fills", headers=KEY_A)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
