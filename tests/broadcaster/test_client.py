"""Slow clients: one that stops reading is closed with 1013 and costs the others nothing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from prometheus_client import generate_latest
from websockets.exceptions import ConnectionClosed

from tests.broadcaster.conftest import Broadcaster, BroadcasterFactory, StreamFactory, eventually
from tests.broadcaster.test_replay import make_trades
from tests.matcher.harness import Harness

TRADES = 3000


def tiny_receive_buffer(broadcaster: Broadcaster) -> socket.socket:
    """A connected socket whose kernel buffer holds a few KB, so not reading backs up the server fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((broadcaster.settings.host, broadcaster.settings.port))
    sock.setblocking(False)
    return sock


def metric(broadcaster: Broadcaster, line_start: str) -> float:
    for line in generate_latest(broadcaster.ctx.metrics.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_client_that_never_reads_is_dropped_and_the_other_gets_everything(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness) -> None:
    # A close timeout longer than the test: the dropped client reads its backlog (and the 1013) only after
    # the reader got everything, which a loaded machine may take longer than the default 5 s to do.
    broadcaster = await make_broadcaster(queue_bound=200, read_count=100, send_buffer_bytes=16384,
                                         close_timeout_s=60)
    stalled = await open_stream(broadcaster, sock=tiny_receive_buffer(broadcaster), max_queue=1)
    await stalled.subscribe(["trades"], ["BTC-USD"])
    reader = await open_stream(broadcaster)
    await reader.subscribe(["trades"], ["BTC-USD"])

    received: list[dict[str, Any]] = []

    async def read_all() -> None:
        while len(received) < TRADES:
            received.append(await reader.next(10))

    reading = asyncio.create_task(read_all())
    await make_trades(btc, TRADES, per_call=50)
    await asyncio.wait_for(reading, 30)
    assert [t["seq"] for t in received] == list(range(1, TRADES + 1))

    await eventually(lambda: metric(broadcaster, 'websocket_clients_dropped_total{reason="slow"}') == 1, 5,
                     "the stalled client dropped")
    # The stalled client catches up on what was already on its way, then finds the 1013 close.
    backlog: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(10):
            while True:
                backlog.append(await stalled.next(10))
    except ConnectionClosed:
        pass
    assert stalled.ws.close_code == 1013
    assert stalled.ws.close_reason == "client too slow"
    seqs = [m["seq"] for m in backlog]
    assert seqs == list(range(1, len(seqs) + 1)), "whatever arrived before the drop came in order"
    assert len(seqs) < TRADES
    assert metric(broadcaster, "websocket_clients ") == 1.0  # the reader is still connected


async def test_a_client_that_never_reads_again_is_cut_off(
        make_broadcaster: BroadcasterFactory, open_stream: StreamFactory, btc: Harness) -> None:
    broadcaster = await make_broadcaster(queue_bound=200, read_count=100, send_buffer_bytes=16384,
                                         close_timeout_s=0.3)
    stalled = await open_stream(broadcaster, sock=tiny_receive_buffer(broadcaster), max_queue=1)
    await stalled.subscribe(["trades"], ["BTC-USD"])
    await make_trades(btc, 1500, per_call=50)
    # Its 1013 cannot be written while it does not read: after close_timeout_s the connection is reset,
    # so it holds no server memory.
    await eventually(lambda: metric(broadcaster, "websocket_clients ") == 0, 5, "the session ended")
    assert metric(broadcaster, 'websocket_clients_dropped_total{reason="slow"}') == 1
    # Reset, not left to drain forever.
    await eventually(lambda: not broadcaster.server.server_state.connections, 2, "the connection reset")
    stalled.ws.transport.abort()  # it never reads, so it would wait out its own close timeout
