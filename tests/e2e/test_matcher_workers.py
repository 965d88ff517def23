"""`MATCHER_WORKERS=2 make run`: two matchers share the instruments by lease, each /healthz on its own port lists
its own; when the holder of an instrument is killed, its orders are still matched within the lease plus 1 s."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from services.common.instruments import load_instruments
from services.common.keys import instrument_keys
from tests.e2e.engine import RunningEngine, engine_env, running_engine
from tests.processes import REPO_ROOT, free_port, reserve

pytestmark = pytest.mark.timeout(180)

A = {"Authorization": "Bearer demo-key-A"}
LEASE_MS = 1000


def port_pair(gap: int) -> int:
    """A free port p with p + gap free too (matcher 2 listens 100 above matcher 1)."""
    for _ in range(200):
        base = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base + gap))
            except OSError:
                continue
        if reserve(range(base + gap, base + gap + 1)):
            return base
    raise RuntimeError("no free pair of ports")


def healthz(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except OSError:
        return 0, {}


def worker_index(pid: int) -> str:
    """MATCHER_WORKER_INDEX of a matcher process (circus's wid)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"MATCHER_WORKER_INDEX="))


@pytest.fixture
def two_matchers(key_prefix: str, redis_url: str, engine_db: str, tmp_path: Path) -> Iterator[RunningEngine]:
    env = engine_env(key_prefix, redis_url, engine_db, tmp_path)
    env.update(MATCHER_WORKERS="2", MATCHER_METRICS_PORT=str(port_pair(100)), MATCHER_LEASE_MS=str(LEASE_MS))
    with running_engine(env, tmp_path) as engine:
        yield engine


async def test_two_matchers_share_the_instruments_and_survive_a_kill(
        two_matchers: RunningEngine, redis: Redis, key_prefix: str) -> None:
    running = two_matchers
    symbols = sorted(load_instruments(REPO_ROOT / "instruments.toml"))
    base = int(running.env["MATCHER_METRICS_PORT"])
    urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 100}"]

    def spread() -> bool:
        answers = [healthz(url) for url in urls]
        held = [lease for _, body in answers for lease in body.get("leases", [])]  # type: ignore[attr-defined]
        return all(status == 200 for status, _ in answers) and sorted(held) == symbols

    running.wait_until(spread, 30, "both matchers healthy, every instrument held once")
    assert len(running.pids("matcher")) == 2

    symbol = symbols[0]
    lease_key = instrument_keys(key_prefix, symbol).matcher_lease
    holder = (await redis.get(lease_key) or b"").decode()
    assert holder in ("matcher-1", "matcher-2")
    assert symbol in healthz(urls[int(holder[-1]) - 1])[1]["leases"]  # type: ignore[operator]
    [victim] = [pid for pid in running.pids("matcher") if worker_index(pid) == holder[-1]]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as http:
        placed = await http.post("/orders", headers=A, json={
            "client_id": "client-A", "instrument": symbol, "side": "buy", "type": "limit", "price": "100.00",
            "quantity": "1"})
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["order_id"]
        while (await http.get(f"/orders/{order_id}", headers=A)).json()["status"] != "open":
            assert time.monotonic() - killed < LEASE_MS / 1000 + 1, "not matched within the lease plus 1 s"
            await asyncio.sleep(0.02)
    # circus starts matcher-<wid> again; the two end up sharing the instruments as before.
    running.wait_until(spread, 30, "both matchers back")
