"""Client messages the broadcaster refuses get an `error`, and the connection keeps working."""

from __future__ import annotations

import asyncio

import pytest

from tests.broadcaster.conftest import BroadcasterFactory, StreamFactory, eventually
from tests.matcher.harness import Harness

MALFORMED: list[tuple[object, str]] = [
    ("not json", "invalid message: JSON is malformed"),
    (b"\xff\xfe binary", "invalid message: JSON is malformed"),
    ("[1, 2]", "invalid message: Expected `object`, got `array`"),
    ({"channels": ["trades"]}, "invalid message: Object missing required field `op`"),
    ({"op": "shout"}, "invalid message: Invalid value 'shout' - at `$.op`"),
    ({"op": "subscribe"}, "invalid message: Object missing required field `channels`"),
    ({"op": "subscribe", "channels": []}, "invalid message: Expected `array` of length >= 1 - at `$.channels`"),
    ({"op": "subscribe", "channels": ["candles"]}, "invalid message: Invalid enum value 'candles'"),
    ({"op": "subscribe", "channels": "trades"}, "invalid message: Expected `array`, got `str`"),
    ({"op": "subscribe", "channels": ["trades"], "instruments": ["DOGE-USD"]}, "unknown instrument 'DOGE-USD'"),
    ({"op": "subscribe", "channels": ["trades"], "since_seq": -1}, "invalid message: Expected `int` >= 0"),
    ({"op": "subscribe", "channels": ["trades"], "since_seq": "5"}, "invalid message: Expected `int | null`"),
    ({"op": "subscribe", "channels": ["orderbook_deltas"], "since_seq": 5},
     "since_seq applies to the trades channel only"),
    ({"op": "subscribe", "channels": ["trades"], "extra": 1}, "invalid message: Object contains unknown field"),
    ({"op": "auth"}, "invalid message: Object missing required field `api_key`"),
    ({"op": "auth", "api_key": ""}, "invalid message: Expected `str` of length >= 1"),
    ("x" * 5000, "message of 5000 bytes is over the limit of 4096"),
]


@pytest.mark.parametrize("bad", range(len(MALFORMED)))
async def test_malformed_message_gets_an_error_and_the_connection_lives_on(
        bad: int, open_stream: StreamFactory, btc: Harness) -> None:
    message, expected = MALFORMED[bad]
    stream = await open_stream()
    await stream.send(message)
    error = await stream.expect("error")
    assert set(error) == {"type", "message"}
    assert error["message"].startswith(expected), error
    # Still served: it can subscribe and receive.
    await stream.subscribe(["trades"], ["BTC-USD"])
    await btc.new("sell", "100.00", "1")
    await btc.new("buy", "100.00", "1")
    await btc.run()
    assert (await stream.expect("trade"))["seq"] == 1


async def test_subscription_limit(make_broadcaster: BroadcasterFactory, open_stream: StreamFactory) -> None:
    stream = await open_stream(await make_broadcaster(max_subscriptions=3))
    await stream.subscribe(["trades", "orderbook_deltas"], ["BTC-USD"])
    await stream.expect("orderbook_snapshot")
    await stream.send({"op": "subscribe", "channels": ["trades", "orderbook_deltas"], "instruments": ["ETH-USD"]})
    assert await stream.expect("error") == {
        "type": "error", "message": "4 subscriptions would be over the limit of 3 per connection"}
    await stream.subscribe(["trades", "orderbook_deltas"], ["BTC-USD"])  # already there: nothing new
    await stream.subscribe(["trades"], ["ETH-USD"])
    assert await stream.quiet(0.1) == []  # no second snapshot for BTC-USD


async def test_pings(make_broadcaster: BroadcasterFactory, open_stream: StreamFactory) -> None:
    stream = await open_stream(await make_broadcaster(ping_interval_s=0.1, ping_timeout_s=1.0),
                               ping_interval=None)
    await stream.send({"op": "ping"})
    assert await stream.expect("pong") == {"type": "pong"}
    pong = await stream.ws.ping()
    await asyncio.wait_for(pong, 2)
    await asyncio.sleep(0.5)  # several server pings, answered by the client library
    await stream.send({"op": "ping"})
    await stream.expect("pong")


async def test_a_client_that_stops_answering_pings_is_disconnected(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory) -> None:
    broadcaster = await make_broadcaster(ping_interval_s=0.1, ping_timeout_s=0.2)
    stream = await open_stream(broadcaster, ping_interval=None)
    stream.ws.transport.pause_reading()  # pings go unanswered
    await eventually(lambda: not broadcaster.server.server_state.connections, 3, "the connection closed")
    stream.ws.transport.abort()
