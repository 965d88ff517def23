"""`python -m services.broadcaster` follows API_KEYS_FILE: a revoked key's sockets are closed with 1008."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.apikeys.cli import create_key, revoke_key
from tests.conftest import TWO_INSTRUMENTS
from tests.processes import REPO_ROOT, Service, free_port


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def broadcaster_env(redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("API_KEYS_FILE", "ALLOW_DEMO_KEYS", "AUTH_MODE", "LOG_FILE"):
        monkeypatch.delenv(name, raising=False)
    return {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix, "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS),
            "BROADCASTER_READ_BLOCK_MS": "200", "LOG_LEVEL": "INFO"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.toml"


@pytest.fixture
def broadcaster(broadcaster_env: dict[str, str], keys_file: Path, tmp_path: Path) -> Iterator[Service]:
    create_key(keys_file, "admin")  # the file exists before the start
    port = free_port()
    service = Service("broadcaster", {**broadcaster_env, "BROADCASTER_PORT": str(port),
                                      "API_KEYS_FILE": str(keys_file)},
                      f"http://127.0.0.1:{port}/healthz", tmp_path / "broadcaster.log")
    try:
        yield service.start()
    finally:
        assert service.stop() == 0


async def messages(ws: ClientConnection, within: float = 5.0) -> list[dict[str, Any]]:
    """What the server sends until it closes the connection (fails if it does not within `within` s)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        try:
            while True:
                data = json.loads(await ws.recv())
                out.extend(data if isinstance(data, list) else [data])
        except ConnectionClosed:
            return out


async def test_a_revoked_keys_sockets_are_closed_with_1008(broadcaster: Service, keys_file: Path) -> None:
    url = broadcaster.health_url.replace("http", "ws").replace("/healthz", "/stream")
    trader_id, trader = create_key(keys_file, "trader", "client-C")
    broker_id, broker = create_key(keys_file, "broker")

    async def auth(ws: ClientConnection, key: str) -> dict[str, Any]:
        await ws.send(json.dumps({"op": "auth", "api_key": key}))
        return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))

    # The keys were created after the start: in use within 5 s.
    deadline = time.monotonic() + 5
    for key in (trader, broker):
        while True:
            async with connect(url) as probe:
                if (await auth(probe, key))["type"] == "authenticated":
                    break
            assert time.monotonic() < deadline, "the new keys not accepted within 5 s"
            await asyncio.sleep(0.1)

    async with connect(url) as by_op, connect(url) as by_op_too, \
            connect(url, additional_headers={"Authorization": f"Bearer {broker}"}) as by_header, \
            connect(url) as public:
        for ws in (by_op, by_op_too):
            assert await auth(ws, trader) == {"type": "authenticated", "role": "trader", "client_id": "client-C"}
        for ws in (by_op, by_op_too, by_header, public):
            await ws.send(json.dumps({"op": "subscribe", "channels": ["orders"] if ws is not public else ["trades"],
                                      "instruments": ["BTC-USD"]}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"

        started = time.monotonic()
        revoke_key(keys_file, trader_id)
        for ws in (by_op, by_op_too):
            assert await messages(ws) == [{"type": "error", "message": "API key revoked: closing the connection"}]
            assert (ws.close_code, ws.close_reason) == (1008, "API key revoked")
        assert time.monotonic() - started < 5
        # The others stay open.
        for ws in (by_header, public):
            await ws.send(json.dumps({"op": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"
        async with connect(url) as late:
            assert await auth(late, trader) == {"type": "error", "message": "invalid API key"}

        revoke_key(keys_file, broker_id)  # authenticated by its Authorization header
        assert await messages(by_header) == [{"type": "error", "message": "API key revoked: closing the connection"}]
        assert by_header.close_code == 1008
        await public.send(json.dumps({"op": "ping"}))
        assert json.loads(await asyncio.wait_for(public.recv(), 5))["type"] == "pong"

    async with httpx.AsyncClient(timeout=5) as http:
        metrics = (await http.get(broadcaster.health_url.replace("/healthz", "/metrics"))).text
    assert 'websocket_clients_dropped_total{reason="key_revoked"} 3.0' in metrics
    lines = log_lines(broadcaster.log_path)
    closed = [line for line in lines if line["msg"] == "API key revoked, closing the connection"]
    assert sorted(line["key_id"] for line in closed) == sorted([trader_id, trader_id, broker_id])
    assert trader not in broadcaster.log_path.read_text() and broker not in broadcaster.log_path.read_text()


def test_the_demo_set_warns_at_start_and_is_refused_with_allow_demo_keys_0(
        broadcaster_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    service = Service("broadcaster", {**broadcaster_env, "BROADCASTER_PORT": str(port)},
                      f"http://127.0.0.1:{port}/healthz", tmp_path / "demo.log")
    try:
        service.start()
        warnings = [line for line in log_lines(service.log_path) if line.get("event") == "demo_api_keys"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    finally:
        assert service.stop() == 0
    refused = subprocess.run([sys.executable, "-m", "services.broadcaster"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=30, env={**os.environ, **broadcaster_env,
                                                         "BROADCASTER_PORT": str(free_port()), "ALLOW_DEMO_KEYS": "0"})
    assert refused.returncode == 2, refused.stderr
    lines = [json.loads(x) for x in refused.stderr.splitlines() if x.startswith("{")]
    [line] = [line for line in lines if line["level"] == "error"]
    assert line["event"] == "config_error" and "ALLOW_DEMO_KEYS=0" in line["msg"]
    assert not any(line.get("event") == "demo_api_keys" for line in lines)
