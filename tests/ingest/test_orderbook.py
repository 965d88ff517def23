"""GET /orderbook: aggregated levels best first, exact cumulative depth, the book seq, validation."""

from __future__ import annotations

import asyncio

import pytest

from services.common.book import read_book
from tests.ingest.conftest import BROKER, Engine, limit_order


async def test_levels_best_first_with_exact_cumulative_depth(engine: Engine) -> None:
    for side, price, quantity in [
        ("buy", "99.50", "2"), ("buy", "100.00", "0.5"), ("buy", "99.99", "1"), ("buy", "100.00", "0.25"),
        ("sell", "101.00", "3"), ("sell", "100.05", "0.1"), ("sell", "100.05", "0.00000001"),
    ]:
        await engine.place(client_id="mm", side=side, price=price, quantity=quantity)
    await engine.drain()
    response = await engine.client.get("/orderbook", params={"instrument": "BTC-USD", "levels": "2"})
    assert response.status_code == 200
    book = response.json()
    assert book == {
        "instrument": "BTC-USD",
        "seq": int(await engine.redis.hget(engine.keys["BTC-USD"].meta, "book_seq")),
        "bids": [
            {"price": "100.00", "quantity": "0.75", "cumulative": "0.75"},
            {"price": "99.99", "quantity": "1", "cumulative": "1.75"},
        ],
        "asks": [
            {"price": "100.05", "quantity": "0.10000001", "cumulative": "0.10000001"},
            {"price": "101.00", "quantity": "3", "cumulative": "3.10000001"},
        ],
    }
    assert book["seq"] == 1  # one match.lua call applied all seven orders
    full = (await engine.client.get("/orderbook?instrument=BTC-USD")).json()
    assert [level["cumulative"] for level in full["bids"]] == ["0.75", "1.75", "3.75"]
    # The shared reader the broadcaster uses gives the same snapshot.
    btc = engine.settings.instruments["BTC-USD"]
    snapshot = await read_book(engine.redis, btc, engine.keys["BTC-USD"], 20)
    assert (snapshot.seq, [lv.price for lv in snapshot.bids]) == (1, ["100.00", "99.99", "99.50"])


async def test_an_empty_book(engine: Engine) -> None:
    book = (await engine.client.get("/orderbook?instrument=ETH-USD")).json()
    assert book == {"instrument": "ETH-USD", "seq": 0, "bids": [], "asks": []}


@pytest.mark.parametrize("query", [
    "", "?instrument=DOGE-USD", "?instrument=BTC-USD&levels=0", "?instrument=BTC-USD&levels=1001",
    "?instrument=BTC-USD&levels=abc", "?instrument=BTC-USD&levels=-1", "?instrument=BTC-USD&levels=%C2%B2",
])
async def test_422_for_a_bad_instrument_or_levels(engine: Engine, query: str) -> None:
    response = await engine.client.get(f"/orderbook{query}")
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] in ("instrument", "levels")


async def test_a_thousand_concurrent_orders_at_one_price_all_reach_the_level(engine: Engine) -> None:
    responses = await asyncio.gather(*(
        engine.post(limit_order(client_id=f"acct-{i}", price="42000.00", quantity=f"{i + 1}e-8"), BROKER)
        for i in range(1000)
    ))
    assert [r.status_code for r in responses] == [201] * 1000
    assert len({r.json()["order_id"] for r in responses}) == 1000
    # Coalesced: far fewer pipelines than requests.
    assert engine.ctx.batcher.pipelines_sent < 500
    assert await engine.drain() == 1000
    book = (await engine.client.get("/orderbook?instrument=BTC-USD")).json()
    total = f"{sum(range(1, 1001)) / 1e8:.8f}".rstrip("0")
    assert book["bids"] == [{"price": "42000.00", "quantity": total, "cumulative": total}]
    assert total == "0.005005"
