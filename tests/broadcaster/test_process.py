"""`python -m services.broadcaster` as real processes: two side by side, ops endpoints, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import TWO_INSTRUMENTS
from tests.matcher.harness import Harness
from tests.processes import Service, free_port


@pytest.fixture
def processes(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[list[Service]]:
    services = []
    for n in range(2):
        port = free_port()
        env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix, "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS),
               "BROADCASTER_PORT": str(port), "BROADCASTER_READ_BLOCK_MS": "200"}
        services.append(Service("broadcaster", env, f"http://127.0.0.1:{port}/readyz", tmp_path / f"b{n}.log"))
    try:
        for service in services:
            service.start()
        yield services
    finally:
        for service in services:
            service.stop()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return str(answer.read().decode())


async def test_two_processes_each_deliver_every_trade_and_stop_cleanly(
        processes: list[Service], btc: Harness) -> None:
    urls = [s.health_url.removesuffix("/readyz") for s in processes]
    async with connect(urls[0].replace("http", "ws") + "/stream") as ws0, \
            connect(urls[1].replace("http", "ws") + "/stream") as ws1:
        for ws in (ws0, ws1):
            await ws.send(json.dumps({"op": "subscribe", "channels": ["trades"], "instruments": ["BTC-USD"]}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
        await btc.new("sell", "100.00", "1")
        await btc.new("buy", "100.00", "1")
        await btc.run()
        for ws in (ws0, ws1):
            trade = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (trade["type"], trade["seq"], trade["price"]) == ("trade", 1, "100.00")

        assert json.loads(get(urls[0] + "/healthz")) == {"status": "ok"}
        metrics = get(urls[0] + "/metrics")
        assert "websocket_clients 1.0" in metrics
        assert "websocket_messages_sent_total 2.0" in metrics  # subscribed + trade
        assert f'broadcaster_events_read_total{{stream="{btc.keys.trades}"}} 1.0' in metrics

        # SIGTERM with a client still connected: it is told (1012, going away) and the process exits 0.
        assert processes[0].stop() == 0
        with pytest.raises(Exception, match="1012"):
            await asyncio.wait_for(ws0.recv(), 5)
    log = [json.loads(line) for line in processes[0].log_path.read_text().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in log]
    assert "client connected" in messages and "client disconnected" in messages and "broadcaster stopped" in messages
    assert all(line["service"] == "broadcaster" for line in log)
