"""Ingest in-process with REDIS_MODE=cluster (its ClusterBatcher) against the local 3-master cluster: orders of
instruments on 3 masters, and an order placed while its instrument's slot is being moved."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.instruments import load_instruments
from services.common.keys import instrument_keys
from services.common.redis_cluster_batch import ClusterBatcher
from services.ingest.app import create_app, serving_app
from services.ingest.settings import IngestSettings
from tests.cluster.conftest import LocalCluster
from tests.ingest.conftest import BROKER, DEMO_KEYS, limit_order

pytestmark = pytest.mark.slow


class Ingest:
    def __init__(self, client: httpx.AsyncClient, settings: IngestSettings, batcher: Any) -> None:
        self.client = client
        self.settings = settings
        self.batcher = batcher

    async def place(self, symbol: str, **fields: Any) -> httpx.Response:
        body = limit_order(instrument=symbol, client_id="client-A", **fields)
        return await self.client.post("/orders", json=body, headers=BROKER)


@pytest.fixture
async def ingest(redis_cluster: LocalCluster, cluster_symbols: list[str], database_url: str,
                 tmp_path: Path) -> AsyncIterator[Ingest]:
    instruments = load_instruments(redis_cluster.instruments_toml(cluster_symbols, tmp_path / "instruments.toml"))
    settings = IngestSettings(redis_url=redis_cluster.url, redis_mode="cluster",
                              key_prefix=f"test-{uuid.uuid4().hex[:10]}:", instruments=instruments,
                              api_keys_file=DEMO_KEYS, lag_poll_interval_s=0.05, database_url=database_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=serving_app(app)), base_url="http://ingest") as client:
        yield Ingest(client, settings, app.state.ctx.batcher)


async def test_orders_of_instruments_on_three_masters(redis_cluster: LocalCluster, ingest: Ingest,
                                                      cluster_symbols: list[str]) -> None:
    assert isinstance(ingest.batcher, ClusterBatcher)
    answers = await asyncio.gather(*(ingest.place(s, price="100.00", quantity="1") for s in cluster_symbols))
    assert [a.status_code for a in answers] == [201, 201, 201], [a.text for a in answers]
    for symbol, answer in zip(cluster_symbols, answers, strict=True):
        keys = instrument_keys(ingest.settings.key_prefix, symbol)
        master = redis_cluster.client(redis_cluster.master_of(symbol))
        assert master.xlen(keys.orders) == 1  # on its own master
        order_id = answer.json()["order_id"]
        got = await ingest.client.get(f"/orders/{order_id}", headers=BROKER)
        assert got.status_code == 200 and got.json()["instrument"] == symbol
        book = await ingest.client.get("/orderbook", params={"instrument": symbol})
        assert book.status_code == 200, book.text
        cancelled = await ingest.client.delete(f"/orders/{order_id}", headers=BROKER)
        assert cancelled.status_code in (200, 202), cancelled.text
        assert master.xlen(keys.orders) == 2  # the cancel command, next to the order
    assert {port for (_, port) in ingest.batcher._nodes} == set(redis_cluster.nodes)


async def test_an_order_placed_during_a_slot_move_is_accepted_once(redis_cluster: LocalCluster, ingest: Ingest,
                                                                   cluster_symbols: list[str]) -> None:
    symbol = cluster_symbols[1]
    keys = instrument_keys(ingest.settings.key_prefix, symbol)
    assert (await ingest.place(symbol, price="100.00", quantity="1")).status_code == 201
    source = redis_cluster.master_of(symbol)
    target = next(p for p in redis_cluster.nodes if p != source)
    move = redis_cluster.begin_move(symbol, target)
    try:
        placing = asyncio.ensure_future(ingest.place(symbol, price="101.00", quantity="2", idempotency_key="k1"))
        await asyncio.sleep(0.3)
        assert not placing.done()  # accept.lua is refused (TRYAGAIN) until the move ends: nothing half-written
        await asyncio.to_thread(move.finish)
        answer = await placing
        assert answer.status_code == 201, answer.text
        assert redis_cluster.client(target).xlen(keys.orders) == 2  # accepted exactly once, on the new master
        again = await ingest.place(symbol, price="101.00", quantity="2", idempotency_key="k1")
        assert again.status_code == 200 and again.content == answer.content
    finally:
        redis_cluster.move_slot(symbol, source)
