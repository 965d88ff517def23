"""Abuse limits (CONTRACT.md, "Limits and abuse"): message rate, connection cap, stalled readers, replays."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.broadcaster.conftest import BroadcasterFactory, Stream, StreamFactory, eventually
from tests.broadcaster.test_client import metric, tiny_receive_buffer
from tests.broadcaster.test_replay import make_trades
from tests.matcher.harness import Harness


async def read_until_closed(stream: Stream, within: float = 10) -> list[dict[str, Any]]:
    """Everything the server sent before its close frame."""
    out: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(within):
            while True:
                out.append(await stream.next(within))
    return out


async def test_over_the_message_rate_an_error_then_1008(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory) -> None:
    broadcaster = await make_broadcaster(max_messages_per_sec=5)
    stream = await open_stream(broadcaster)
    for _ in range(5):
        await stream.send({"op": "ping"})
    for _ in range(5):
        await stream.expect("pong")
    await asyncio.sleep(1.05)  # a new second: five more are fine
    for _ in range(5):
        await stream.send({"op": "ping"})
    await stream.send({"op": "ping"})  # the sixth within one second
    messages = await read_until_closed(stream)
    assert messages[-1] == {"type": "error",
                            "message": "more than 5 messages per second: closing the connection"}
    assert [m["type"] for m in messages[:-1]] == ["pong"] * 5
    assert stream.ws.close_code == 1008
    assert stream.ws.close_reason == "message rate limit"
    assert metric(broadcaster, 'websocket_clients_dropped_total{reason="message_rate"}') == 1
    await eventually(lambda: metric(broadcaster, "websocket_clients ") == 0, 2, "the session ended")


async def test_a_client_at_the_rate_stays_connected(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory) -> None:
    stream = await open_stream(await make_broadcaster(max_messages_per_sec=20))
    started = time.monotonic()
    for _ in range(50):  # 2.5 s at exactly 20 per second
        await stream.send({"op": "ping"})
        await stream.expect("pong")
        await asyncio.sleep(0.051)
    assert time.monotonic() - started > 2.5
    await stream.send({"op": "ping"})
    await stream.expect("pong")


async def test_over_the_connection_cap_the_handshake_gets_503(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory) -> None:
    broadcaster = await make_broadcaster(max_connections=2)
    first = await open_stream(broadcaster)
    second = await open_stream(broadcaster)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(broadcaster.url):
            pass
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "1"
    assert b'"too_many_connections"' in refused.value.response.body
    assert metric(broadcaster, "websocket_connections_refused_total") == 1
    # The two admitted are served as usual.
    for stream in (first, second):
        await stream.send({"op": "ping"})
        await stream.expect("pong")
    # A place frees when one leaves.
    await first.ws.close()
    await eventually(lambda: broadcaster.ctx.connections == 1, 2, "the first connection released")
    third = await open_stream(broadcaster)
    await third.send({"op": "ping"})
    await third.expect("pong")


@pytest.mark.parametrize("buffers", ["default", "tiny"])
async def test_a_stalled_client_under_the_queue_bound_is_closed_with_1013(
        buffers: str, make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness) -> None:
    # The queue bound (10,000) is far above the burst: only the stall rule can close this client.
    # "default": the burst fits in the kernel buffers of both ends, so nothing even waits in the
    # broadcaster's queue (the case that stayed open forever); "tiny": the sender itself is blocked.
    # close_timeout_s: the stalled client resumes reading only after the reader got the whole burst.
    if buffers == "default":
        broadcaster = await make_broadcaster(stall_s=0.5, close_timeout_s=60)
        stalled = await open_stream(broadcaster)
    else:
        broadcaster = await make_broadcaster(stall_s=0.5, send_buffer_bytes=16384, close_timeout_s=60)
        stalled = await open_stream(broadcaster, sock=tiny_receive_buffer(broadcaster), max_queue=1)
    await stalled.subscribe(["trades"], ["BTC-USD"])
    stalled.ws.transport.pause_reading()
    idle = await open_stream(broadcaster)  # subscribed to nothing that moves: never stalled
    await idle.subscribe(["trades"], ["ETH-USD"])
    reader = await open_stream(broadcaster)
    await reader.subscribe(["trades"], ["BTC-USD"])
    await make_trades(btc, 2000, per_call=100)
    burst_done = time.monotonic()
    assert [t["seq"] for t in await reader.collect(lambda m: m["seq"] == 2000)] == list(range(1, 2001))

    await eventually(lambda: metric(broadcaster, 'websocket_clients_dropped_total{reason="stalled"}') == 1, 6,
                     "the stalled client dropped")
    # stall_s, plus the check's period and slack for a loaded machine (CI shares its two cores).
    assert time.monotonic() - burst_done < 0.5 + 3.5
    assert metric(broadcaster, 'websocket_clients_dropped_total{reason="slow"}') == 0
    # Reading again (within close_timeout_s), it gets what was on its way, then the 1013.
    stalled.ws.transport.resume_reading()
    backlog = await read_until_closed(stalled)
    assert stalled.ws.close_code == 1013
    assert stalled.ws.close_reason == "client stopped reading"
    seqs = [m["seq"] for m in backlog]
    assert seqs == list(range(1, len(seqs) + 1))
    # The idle client and the reader live on, long past stall_s.
    await asyncio.sleep(1.0)
    for stream in (idle, reader):
        await stream.send({"op": "ping"})
        await stream.expect("pong")
    assert metric(broadcaster, "websocket_clients ") == 2


async def test_a_slow_reader_that_keeps_reading_is_not_stalled(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness) -> None:
    broadcaster = await make_broadcaster(stall_s=0.3, send_buffer_bytes=16384)
    slow = await open_stream(broadcaster, sock=tiny_receive_buffer(broadcaster), max_queue=1)
    await slow.subscribe(["trades"], ["BTC-USD"])
    received: list[int] = []

    async def read_slowly() -> None:
        while len(received) < 1500:  # at least 1.5 s: five times stall_s, never a pause of stall_s
            received.append((await slow.next())["seq"])
            if len(received) % 100 == 0:
                await asyncio.sleep(0.1)

    reading = asyncio.create_task(read_slowly())
    await make_trades(btc, 1500, per_call=100)
    await asyncio.wait_for(reading, 20)
    assert received == list(range(1, 1501))
    assert metric(broadcaster, 'websocket_clients_dropped_total{reason="stalled"}') == 0


async def test_a_full_replay_is_delivered_whole_beyond_the_queue_bound(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness) -> None:
    broadcaster = await make_broadcaster(queue_bound=200, read_count=100, max_replay=3000, stall_s=0.5)
    await make_trades(btc, 3000, per_call=100)
    stream = await open_stream(broadcaster)
    await stream.subscribe(["trades"], ["BTC-USD"], since_seq=0)
    replay = await stream.collect(lambda m: m["seq"] == 3000)
    assert [t["seq"] for t in replay] == list(range(1, 3001))
    # Then live trades; the bound is back to its setting for them.
    await make_trades(btc, 20)
    assert [t["seq"] for t in await stream.collect(lambda m: m["seq"] == 3020)] == list(range(3001, 3021))
    assert [client.bound for client in broadcaster.ctx.clients] == [200]
    for reason in ("slow", "stalled"):
        assert metric(broadcaster, f'websocket_clients_dropped_total{{reason="{reason}"}}') == 0
