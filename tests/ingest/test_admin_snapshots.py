"""Order-book snapshots: on demand through POST /admin/snapshots, and periodically by persister worker 1."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.instruments import Instruments
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, EngineFactory
from tests.persister.runner import workers
from tests.persister.workload import settings_for


async def test_admin_snapshot_stores_the_book_it_serves(make_engine: EngineFactory, db_url: str) -> None:
    engine = await make_engine(database_url=db_url)
    await engine.place(side="buy", price="49999.99", quantity="0.5")
    await engine.place(side="buy", price="49999.99", quantity="0.25")
    await engine.place(side="buy", price="49000", quantity="1")
    await engine.place(client_id="client-B", side="sell", price="50001", quantity="0.1")
    await engine.drain()

    assert (await engine.client.post("/admin/snapshots", headers=KEY_A)).status_code == 403
    assert (await engine.client.post("/admin/snapshots", headers=BROKER)).status_code == 403
    assert (await engine.client.post("/admin/snapshots")).status_code == 401
    answer = await engine.client.post("/admin/snapshots", params={"instrument": "BTC-USD"}, headers=ADMIN)
    assert answer.status_code == 201
    [taken] = answer.json()["snapshots"]
    book = (await engine.client.get("/orderbook", params={"instrument": "BTC-USD"})).json()
    assert (taken["instrument"], taken["seq"]) == ("BTC-USD", book["seq"])

    latest = (await engine.client.get("/admin/snapshots/latest", params={"instrument": "BTC-USD"},
                                      headers=ADMIN)).json()
    assert latest["id"] == taken["id"]
    assert latest["bids"] == [["49999.99", "0.75"], ["49000.00", "1"]]
    assert latest["asks"] == [["50001.00", "0.1"]]
    assert latest["bids"] == [[level["price"], level["quantity"]] for level in book["bids"]]

    both = (await engine.client.post("/admin/snapshots", headers=ADMIN)).json()["snapshots"]
    assert sorted(s["instrument"] for s in both) == ["BTC-USD", "ETH-USD"]
    missing = await engine.client.get("/admin/snapshots/latest", params={"instrument": "DOGE"}, headers=ADMIN)
    assert missing.status_code == 422


async def test_persister_takes_periodic_snapshots(make_engine: EngineFactory, redis_url: str, db_url: str,
                                                  instruments: Instruments, db: AsyncEngine) -> None:
    engine = await make_engine(database_url=db_url)
    await engine.place(side="buy", price="100", quantity="2")
    await engine.drain()
    settings = settings_for(redis_url, engine.settings.key_prefix, db_url, TWO_INSTRUMENTS,
                            snapshot_interval_s=0.1)
    async with workers(settings, instruments, 1):
        for _ in range(100):
            async with db.connect() as conn:
                rows = (await conn.exec_driver_sql(
                    "SELECT instrument, bids::text FROM orderbook_snapshots ORDER BY id")).all()
            if {r[0] for r in rows} == {"BTC-USD", "ETH-USD"}:
                break
            await asyncio.sleep(0.05)
    assert ("BTC-USD", '[["100.00", "2"]]') in rows
    latest = await engine.client.get("/admin/snapshots/latest", headers=ADMIN)
    assert latest.status_code == 200 and latest.json()["bids"] == [["100.00", "2"]]
