"""since_seq: the trades a client missed come from the stream, then the live feed, no gap, no duplicate."""

from __future__ import annotations

import asyncio

from tests.broadcaster.conftest import BroadcasterFactory, StreamFactory
from tests.matcher.harness import Harness


async def make_trades(harness: Harness, count: int, per_call: int = 10) -> None:
    """`count` trades of 0.001 each against one large resting sell, matched `per_call` at a time."""
    await harness.new("sell", "100.00", str(count), client="client-B")
    for done in range(0, count, per_call):
        for _ in range(min(per_call, count - done)):
            await harness.new("buy", "100.00", "1", client="client-A")
        await harness.run()
        await asyncio.sleep(0)


async def test_replay_then_live_without_gap_or_duplicate(open_stream: StreamFactory, btc: Harness) -> None:
    await make_trades(btc, 60)
    producer = asyncio.create_task(make_trades(btc, 400, per_call=5))  # trades keep coming meanwhile
    await asyncio.sleep(0.01)
    streams = []
    for since in (20, 0, 59):
        stream = await open_stream()
        assert (await stream.subscribe(["trades"], ["BTC-USD"], since_seq=since))["since_seq"] == since
        streams.append((since, stream))
        await asyncio.sleep(0.02)
    assert not producer.done(), "the subscriptions must race the producer"
    await producer
    for since, stream in streams:
        trades = await stream.collect(lambda m: m["seq"] == 460)
        assert [t["seq"] for t in trades] == list(range(since + 1, 461)), since
        assert all(t["type"] == "trade" for t in trades)
        assert await stream.quiet(0.1) == []


async def test_since_seq_beyond_the_stream_replays_nothing(open_stream: StreamFactory, btc: Harness) -> None:
    await make_trades(btc, 3)
    stream = await open_stream()
    await stream.subscribe(["trades"], ["BTC-USD"], since_seq=1000)
    # Messages are handled in order: the pong says the replay is over (else trades 4 and 5 could be
    # in the stream when it is read, and since_seq=1000 claims they were seen).
    await stream.send({"op": "ping"})
    await stream.expect("pong")
    await make_trades(btc, 2)
    assert [t["seq"] for t in await stream.collect(lambda m: m["seq"] == 5)] == [4, 5]


async def test_replay_is_capped(make_broadcaster: BroadcasterFactory, open_stream: StreamFactory,
                                btc: Harness) -> None:
    small = await make_broadcaster(max_replay=10)
    await make_trades(btc, 30)
    stream = await open_stream(small)
    await stream.subscribe(["trades"], ["BTC-USD"], since_seq=5)
    assert await stream.expect("error") == {
        "type": "error",
        "message": "trades 6..20 of BTC-USD are not replayed (at most 10, or trimmed from the stream): "
                   "GET /trades has them"}
    assert [t["seq"] for t in await stream.collect(lambda m: m["seq"] == 30)] == list(range(21, 31))
