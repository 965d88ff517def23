"""Two configured instruments have their own streams, books and sequences, and never touch each other."""

from __future__ import annotations

from redis.asyncio import Redis

from services.common.instruments import Instruments
from tests.matcher.harness import Harness


async def test_instruments_are_isolated(redis: Redis, key_prefix: str, instruments: Instruments) -> None:
    btc = Harness(redis, instruments["BTC-USD"], key_prefix)
    eth = Harness(redis, instruments["ETH-USD"], key_prefix)
    await btc.prepare()
    await eth.prepare()
    await btc.new("sell", "50000", "1", order_id="b-s1")
    await eth.new("sell", "3000.05", "2.5", order_id="e-s1")
    await eth.new("buy", "3000.10", "1.001", order_id="e-b1")
    await btc.new("buy", "49999.99", "1", order_id="b-b1")
    await btc.run()
    await eth.run()

    assert [(t.trade_id, t.seq, t.price, t.quantity) for t in await eth.trades()] == [
        ("ETH-USD-1", "1", "3000.05", "1.001")]
    assert await btc.trades() == []
    assert await btc.book() == {"buy": [("49999.99", "1")], "sell": [("50000.00", "1")]}
    assert await eth.book() == {"buy": [], "sell": [("3000.05", "1.499")]}
    assert [e.seq for e in await btc.events()] == ["1", "2"]
    assert [e.seq for e in await eth.events()] == ["1", "2", "3", "4"]
    assert len({btc.keys.orders, eth.keys.orders, btc.keys.order_state, eth.keys.order_state}) == 4
