"""The order book feed: a snapshot, then consecutive deltas, rebuild exactly the book in Redis."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from services.common.book import read_book
from tests.broadcaster.conftest import Message, Stream, StreamFactory
from tests.matcher.harness import Harness

Book = dict[str, dict[str, str]]


class BookClient:
    """Applies a snapshot and then deltas, checking that seq never skips or repeats."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.sides: Book = {"buy": {}, "sell": {}}
        self.seq = -1
        self.snapshots = 0
        self.snapshot_bids: list[str] = []  # prices of the last snapshot's bids, in its order

    def apply(self, message: Message) -> None:
        if message["type"] == "orderbook_snapshot":
            self.snapshots += 1
            self.snapshot_bids = [price for price, _ in message["bids"]]
            self.sides = {"buy": dict(map(tuple, message["bids"])), "sell": dict(map(tuple, message["asks"]))}
            self.seq = message["seq"]
        else:
            assert message["type"] == "orderbook_delta", message
            assert self.seq >= 0, "a delta before the snapshot"
            assert message["seq"] == self.seq + 1, (message["seq"], self.seq)
            self.seq = message["seq"]
            for side, price, quantity in message["changes"]:
                if quantity == "0":
                    # A level can come and go within one matcher call: "0" for a level never seen.
                    self.sides[side].pop(price, None)
                else:
                    self.sides[side][price] = quantity

    async def follow_until(self, seq: int) -> None:
        while self.seq < seq:
            self.apply(await self.stream.next(10))


async def random_flow(harness: Harness, count: int, seed: int) -> None:
    """`count` commands around 100.00: limits on both sides, some markets, some cancels."""
    rng = random.Random(seed)
    placed: list[str] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.1 and placed:
            await harness.cancel(placed.pop(rng.randrange(len(placed))))
            continue
        side = rng.choice(("buy", "sell"))
        quantity = f"{rng.randint(1, 200) / 100:.2f}"
        if roll < 0.2:
            placed.append(await harness.new(side, None, quantity, type="market"))
        else:
            offset = rng.randint(-40, 60) if side == "sell" else rng.randint(-60, 40)
            placed.append(await harness.new(side, f"{100 + offset / 100:.2f}", quantity))


async def book_seq(redis: Redis, harness: Harness) -> int:
    return int(await redis.hget(harness.keys.meta, "book_seq") or 0)


async def test_snapshot_and_deltas_rebuild_the_book_through_a_burst(
        open_stream: StreamFactory, btc: Harness, redis: Redis) -> None:
    await random_flow(btc, 200, seed=1)  # a book to start from, so the first snapshot is not empty
    await btc.run()
    early = BookClient(await open_stream())
    await early.stream.subscribe(["orderbook_deltas"], ["BTC-USD"])

    async def match_continuously() -> None:
        while True:
            if not (await btc.matcher.step()).applied:
                await asyncio.sleep(0.001)

    matcher = asyncio.create_task(match_continuously())
    try:
        await random_flow(btc, 1000, seed=2)
        # Subscribes while the matcher is busy: the snapshot races the deltas it must not lose or repeat.
        middle = BookClient(await open_stream())
        await middle.stream.subscribe(["orderbook_deltas"], ["BTC-USD"])
        await random_flow(btc, 1000, seed=3)
        while await redis.xlen(btc.keys.orders) and (await btc.matcher.step()).applied:
            pass
    finally:
        matcher.cancel()
    await btc.run()
    late = BookClient(await open_stream())
    await late.stream.subscribe(["orderbook_deltas"], ["BTC-USD"])

    final_seq = await book_seq(redis, btc)
    expected = await read_book(redis, btc.instrument, btc.keys, 1000)
    assert expected.seq == final_seq
    assert expected.bids and expected.asks
    for client in (early, middle, late):
        await client.follow_until(final_seq)
        assert client.snapshots == 1
        assert client.seq == final_seq
        assert client.sides["buy"] == {level.price: level.quantity for level in expected.bids}
        assert client.sides["sell"] == {level.price: level.quantity for level in expected.asks}
    # Snapshot order: best first.
    for client in (early, middle, late):
        assert client.snapshot_bids
        assert client.snapshot_bids == sorted(client.snapshot_bids, key=float, reverse=True)


async def test_empty_book_snapshot(open_stream: StreamFactory, btc: Harness) -> None:
    stream = await open_stream()
    await stream.subscribe(["orderbook_deltas"], ["BTC-USD"])
    assert await stream.expect("orderbook_snapshot") == {
        "type": "orderbook_snapshot", "instrument": "BTC-USD", "seq": 0, "bids": [], "asks": []}
    await btc.new("buy", "99.50", "0.25")
    await btc.new("sell", "100.50", "1")
    await btc.run()
    delta = await stream.expect("orderbook_delta")
    assert delta == {"type": "orderbook_delta", "instrument": "BTC-USD", "seq": 1,
                     "changes": [["buy", "99.50", "0.25"], ["sell", "100.50", "1"]]}
    await btc.new("sell", "99.00", "0.25")  # takes the whole bid level
    await btc.run()
    assert (await stream.expect("orderbook_delta"))["changes"] == [["buy", "99.50", "0"]]
