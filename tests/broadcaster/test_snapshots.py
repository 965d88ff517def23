"""Subscribe cost: one shared snapshot per instrument, so subscribe loops do not keep Redis walking the book."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from services.common.book import read_book
from tests.broadcaster.conftest import Broadcaster, BroadcasterFactory, StreamFactory
from tests.broadcaster.test_book import BookClient, book_seq, random_flow
from tests.broadcaster.test_client import metric
from tests.matcher.harness import Harness


def reads(broadcaster: Broadcaster) -> float:
    return metric(broadcaster, "broadcaster_snapshot_reads_total")


async def assert_rebuilds_the_book(client: BookClient, redis: Redis, btc: Harness) -> None:
    final_seq = await book_seq(redis, btc)
    await client.follow_until(final_seq)
    expected = await read_book(redis, btc.instrument, btc.keys, 1000)
    assert client.seq == expected.seq == final_seq
    assert client.sides["buy"] == {level.price: level.quantity for level in expected.bids}
    assert client.sides["sell"] == {level.price: level.quantity for level in expected.asks}


async def test_a_subscribe_loop_walks_the_book_once_per_period(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness) -> None:
    broadcaster = await make_broadcaster(snapshot_cache_ms=60_000, max_messages_per_sec=10_000)
    await random_flow(btc, 300, seed=4)
    await btc.run()
    stream = await open_stream(broadcaster)
    for _ in range(200):
        await stream.subscribe(["orderbook_deltas"], ["BTC-USD"])
        await stream.expect("orderbook_snapshot")
        await stream.send({"op": "unsubscribe", "channels": ["orderbook_deltas"], "instruments": ["BTC-USD"]})
        await stream.expect("unsubscribed")
    assert reads(broadcaster) == 1
    # Many at once share one read too.
    others = [await open_stream(broadcaster) for _ in range(20)]
    await asyncio.gather(*(s.subscribe(["orderbook_deltas"], ["BTC-USD"]) for s in others))
    assert reads(broadcaster) == 1


async def test_a_cached_snapshot_with_the_deltas_since_is_the_book_now(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness, redis: Redis) -> None:
    broadcaster = await make_broadcaster(snapshot_cache_ms=500)
    await random_flow(btc, 200, seed=5)
    await btc.run()
    first = BookClient(await open_stream(broadcaster))
    await first.stream.subscribe(["orderbook_deltas"], ["BTC-USD"])
    await random_flow(btc, 300, seed=6)  # the book moves on after the cached snapshot
    await btc.run()
    second = BookClient(await open_stream(broadcaster))
    await second.stream.subscribe(["orderbook_deltas"], ["BTC-USD"])
    snapshot = await second.stream.expect("orderbook_snapshot")
    second.apply(snapshot)
    assert snapshot["seq"] < await book_seq(redis, btc), "the cached snapshot, then deltas"
    assert reads(broadcaster) == 1
    for client in (first, second):
        await assert_rebuilds_the_book(client, redis, btc)

    # After the period, a subscribe reads the book again, at its seq of now.
    await asyncio.sleep(0.6)
    third = BookClient(await open_stream(broadcaster))
    await third.stream.subscribe(["orderbook_deltas"], ["BTC-USD"])
    snapshot = await third.stream.expect("orderbook_snapshot")
    assert snapshot["seq"] == await book_seq(redis, btc)
    assert reads(broadcaster) == 2
    third.apply(snapshot)
    await random_flow(btc, 100, seed=7)
    await btc.run()
    for client in (first, second, third):
        await assert_rebuilds_the_book(client, redis, btc)
        assert client.snapshots == 1
    # An expired snapshot leaves nothing behind in the hub.
    await asyncio.sleep(0.6)
    assert broadcaster.ctx.hub._tails == {}
