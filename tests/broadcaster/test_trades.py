"""The trades channel: a crossing order's trade arrives on the socket with exactly the public fields."""

from __future__ import annotations

import re

from tests.broadcaster.conftest import StreamFactory
from tests.matcher.harness import Harness

TRADE_FIELDS = {"type", "trade_id", "seq", "instrument", "price", "quantity", "taker_side", "buy_order_id",
                "sell_order_id", "executed_at"}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_trade_arrives_after_crossing_order(open_stream: StreamFactory, btc: Harness) -> None:
    stream = await open_stream()
    subscribed = await stream.subscribe(["trades"], ["BTC-USD"])
    assert subscribed == {"type": "subscribed", "channels": ["trades"], "instruments": ["BTC-USD"]}

    maker = await btc.new("sell", "50000.00", "0.75", client="client-B")
    taker = await btc.new("buy", "50001.00", "0.5", client="client-A")
    await btc.run()

    trade = await stream.expect("trade")
    assert set(trade) == TRADE_FIELDS  # public: no client ids, no maker/taker order ids
    assert ISO_MS.match(trade.pop("executed_at"))
    assert trade == {"type": "trade", "trade_id": "BTC-USD-1", "seq": 1, "instrument": "BTC-USD",
                     "price": "50000.00", "quantity": "0.5", "taker_side": "buy",
                     "buy_order_id": taker, "sell_order_id": maker}


async def test_only_subscribed_instruments_and_channels(open_stream: StreamFactory, btc: Harness) -> None:
    eth_only = await open_stream()
    await eth_only.subscribe(["trades"], ["ETH-USD"])
    everything = await open_stream()
    await everything.subscribe(["trades"])  # all instruments
    await btc.new("sell", "100.00", "1")
    await btc.new("buy", "100.00", "1")
    await btc.run()
    assert (await everything.expect("trade"))["instrument"] == "BTC-USD"
    assert await eth_only.quiet() == []


async def test_unsubscribe_stops_the_feed(open_stream: StreamFactory, btc: Harness) -> None:
    stream = await open_stream()
    await stream.subscribe(["trades"], ["BTC-USD"])
    await stream.send({"op": "unsubscribe", "channels": ["trades"]})
    assert await stream.expect("unsubscribed") == {"type": "unsubscribed", "channels": ["trades"],
                                                   "instruments": ["BTC-USD", "ETH-USD"]}
    await btc.new("sell", "100.00", "1")
    await btc.new("buy", "100.00", "1")
    await btc.run()
    assert await stream.quiet() == []
