"""The engine against a Redis that asks for a password, or speaks TLS: REDIS_URL reaches every connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from services.common.runner import CONFIG_ERROR_EXIT
from tests.processes import REPO_ROOT, Service, free_port
from tests.secured_redis import USER, USER_PASSWORD, auth_server, tls_server

BROKER = {"Authorization": "Bearer demo-broker"}


@pytest.fixture(scope="module")
def auth_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with auth_server(tmp_path_factory.mktemp("redis-auth")) as port:
        yield port


def service(name: str, redis_url: str, db_url: str, log_dir: Path) -> tuple[Service, str]:
    port = free_port()
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "auth-e2e:", "DATABASE_URL": db_url, "LOG_LEVEL": "INFO"}
    env |= {"matcher": {"MATCHER_METRICS_PORT": str(port)},
            "persister": {"PERSISTER_METRICS_PORT": str(port), "PERSISTER_LAG_EVERY_S": "0.2"},
            "broadcaster": {"BROADCASTER_PORT": str(port), "BROADCASTER_READ_BLOCK_MS": "200"},
            "ingest": {"INGEST_PORT": str(port)}}[name]
    health = "/readyz" if name in ("ingest", "broadcaster") else "/healthz"
    return Service(name, env, f"http://127.0.0.1:{port}{health}", log_dir / f"{name}.log"), f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def running(url: str, db_url: str, log_dir: Path) -> AsyncIterator[dict[str, str]]:
    """Matcher, persister, broadcaster (ready: it reads the streams) and ingest as processes on Redis `url`."""
    started: list[Service] = []
    bases: dict[str, str] = {}
    try:
        # Ingest is ready once the matcher's group exists.
        for name in ("matcher", "persister", "broadcaster", "ingest"):
            process, bases[name] = service(name, url, db_url, log_dir)
            started.append(process)
            await asyncio.to_thread(process.start, 30)
        yield bases
    finally:
        for process in started:
            process.stop()


def order(side: str) -> dict[str, str]:
    return {"client_id": "client-A" if side == "buy" else "client-B", "instrument": "BTC-USD", "side": side,
            "type": "limit", "price": "50000.00", "quantity": "0.5"}


async def test_orders_placed_matched_and_persisted_through_a_password(auth_port: int, db_url: str,
                                                                     tmp_path: Path) -> None:
    async with running(f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{auth_port}/1", db_url, tmp_path) as services:
        await place_match_persist(services)


async def test_orders_placed_matched_and_persisted_over_tls(db_url: str, tmp_path: Path) -> None:
    # The server's certificate is verified against the test's CA, and the password travels encrypted.
    with tls_server(tmp_path) as tls:
        url = f"rediss://{USER}:{USER_PASSWORD}@127.0.0.1:{tls.port}/1?ssl_ca_certs={tls.ca}"
        async with running(url, db_url, tmp_path) as services:
            await place_match_persist(services)


async def place_match_persist(services: dict[str, str]) -> None:
    """A crossing pair through ingest: both 201, the buy filled, the trade written to PostgreSQL."""
    async with httpx.AsyncClient(base_url=services["ingest"], headers=BROKER, timeout=10) as client:
        sell = await client.post("/orders", json=order("sell"))
        assert sell.status_code == 201, sell.text
        buy = await client.post("/orders", json=order("buy"))
        assert buy.status_code == 201, buy.text
        for _ in range(100):
            answer = await client.get(f"/orders/{buy.json()['order_id']}")
            if answer.json().get("status") == "filled":
                break
            await asyncio.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["filled_quantity"]) == ("filled", "0.5")
    async with httpx.AsyncClient(base_url=services["persister"], timeout=10) as client:
        for _ in range(100):
            metrics = (await client.get("/metrics")).text
            if 'persister_rows_written_total{table="trades"} 1.0' in metrics.splitlines():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the persister wrote no trade: {metrics}")


async def test_a_wrong_password_is_a_clear_error_never_a_500(auth_port: int, db_url: str, tmp_path: Path) -> None:
    url = f"redis://{USER}:wrong-password@127.0.0.1:{auth_port}/1"
    ingest, base = service("ingest", url, db_url, tmp_path)
    broadcaster, broadcaster_base = service("broadcaster", url, db_url, tmp_path)
    for process, at in ((ingest, base), (broadcaster, broadcaster_base)):
        process.health_url = f"{at}/healthz"  # alive, but not ready
        process.start(30)
    try:
        async with httpx.AsyncClient(base_url=base, headers=BROKER, timeout=10) as client:
            ready = await client.get("/readyz")
            placed = await client.post("/orders", json=order("buy"))
            broadcaster_ready = await client.get(f"{broadcaster_base}/readyz")
        assert ready.status_code == 503, ready.text
        assert placed.status_code == 503, placed.text
        assert placed.json()["error"] == "unavailable", placed.text
        assert broadcaster_ready.status_code == 503, broadcaster_ready.text
    finally:
        ingest.stop()
        broadcaster.stop()
    for name in ("ingest", "broadcaster"):
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log and "wrong-password" not in log, log


@pytest.mark.parametrize("name", ["matcher", "persister"])
def test_a_worker_with_a_wrong_password_stops_with_one_config_error(name: str, auth_port: int, db_url: str,
                                                                   tmp_path: Path) -> None:
    worker, _ = service(name, f"redis://:wrong-password@127.0.0.1:{auth_port}/1", db_url, tmp_path)
    done = subprocess.run([sys.executable, "-m", f"services.{name}"], cwd=REPO_ROOT, env=worker.env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == CONFIG_ERROR_EXIT, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "wrong-password" not in output, output
    [error] = [json.loads(line) for line in output.splitlines() if '"level":"error"' in line]
    assert (error["service"], error["event"]) == (name, "config_error")
    assert "Redis refused the credentials of REDIS_URL" in error["msg"]
