"""`make run` starts the whole engine, answers the README's examples, scales, heals and stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from services.common.keys import PERSISTER_GROUP, instrument_keys
from tests.e2e.engine import RunningEngine, alive, engine_env, http_ok
from tests.processes import REPO_ROOT

pytestmark = pytest.mark.timeout(240)

A = {"Authorization": "Bearer demo-key-A"}
B = {"Authorization": "Bearer demo-key-B"}


async def active_consumers(redis: Redis, stream: str, idle_ms: int = 3000) -> int:
    consumers = await redis.xinfo_consumers(stream, PERSISTER_GROUP)
    return sum(1 for c in consumers if int(c["idle"]) < idle_ms)


async def test_make_run_serves_the_readme_examples_and_stops_cleanly(
        running: RunningEngine, redis: Redis, key_prefix: str, engine_db: str) -> None:
    keys = instrument_keys(key_prefix, "BTC-USD")
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as http:
        sell = await http.post("/orders", headers=B, json={
            "client_id": "client-B", "instrument": "BTC-USD", "side": "sell", "type": "limit",
            "price": "50000.00", "quantity": "0.2"})
        assert sell.status_code == 201
        buy = await http.post("/orders", headers=A, json={
            "idempotency_key": "a-unique-uuid-12345", "client_id": "client-A", "instrument": "BTC-USD",
            "side": "buy", "type": "limit", "price": 50000.0, "quantity": 0.5})
        assert buy.status_code == 201 and buy.json()["status"] == "accepted"
        again = await http.post("/orders", headers=A, json={
            "idempotency_key": "a-unique-uuid-12345", "client_id": "client-A", "instrument": "BTC-USD",
            "side": "buy", "type": "limit", "price": 50000.0, "quantity": 0.5})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"

        for _ in range(100):
            trades = await redis.xrevrange(keys.trades, count=5)
            if trades:
                break
            await asyncio.sleep(0.05)
        [(_, trade)] = trades
        assert (trade[b"price"], trade[b"quantity"], trade[b"buyer_client_id"]) == (b"50000.00", b"0.2", b"client-A")

        book = (await http.get("/orderbook", params={"instrument": "BTC-USD", "levels": "20"})).json()
        assert book["bids"] == [{"price": "50000.00", "quantity": "0.3", "cumulative": "0.3"}]
        order = (await http.get(f"/orders/{buy.json()['order_id']}", headers=A)).json()
        assert (order["status"], order["filled_quantity"], order["average_price"]) == (
            "partially_filled", "0.2", "50000.00")
        cancel = await http.post(f"/orders/{buy.json()['order_id']}/cancel", headers=A)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"

        # The persister has written the trade to the database `make run` created.
        for _ in range(100):
            stored = (await http.get("/trades", params={"instrument": "BTC-USD"})).json()
            if stored:
                break
            await asyncio.sleep(0.1)
        assert [(t["price"], t["quantity"]) for t in stored] == [("50000.00", "0.2")]

        metrics = (await http.get("/metrics")).text
        for name in ("orders_received_total", "orders_rejected_total", "order_latency_seconds_bucket",
                     "idempotent_replays_total", "rate_limited_total"):
            assert name in metrics, name
    async with httpx.AsyncClient() as http:
        matcher_metrics = (await http.get(f"{running.matcher_metrics}/metrics")).text
        persister_metrics = (await http.get(f"{running.persister_metrics()}/metrics")).text
    for name in ("orders_matched_total", "current_orderbook_depth", "stream_group_lag"):
        assert name in matcher_metrics, name
    for name in ("persister_batch_size", "persister_batch_seconds", "stream_group_lag"):
        assert name in persister_metrics, name

    # The process manager answers on Unix sockets in a directory only the engine's user can enter, not on TCP.
    control = running.control_dir
    assert stat.S_IMODE(control.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((control / "circus.sock").stat().st_mode)
    assert stat.S_ISSOCK((control / "circus-pubsub.sock").stat().st_mode)
    assert f"circusctl --endpoint ipc://{control / 'circus.sock'} status" in running.log.read_text()
    pids = [pid for watcher in ("ingest", "matcher", "persister") for pid in running.pids(watcher)]
    assert len(pids) == 3
    started = time.monotonic()
    assert running.interrupt() in (0, 2, 130, -signal.SIGINT)  # make itself dies of the SIGINT
    assert time.monotonic() - started < 20
    running.wait_gone(pids, 10)
    assert not [p for p in pids if alive(p)], "processes left behind after Ctrl-C"
    assert not http_ok(f"{running.ingest}/healthz")
    assert_services_logged_themselves(running)


def assert_services_logged_themselves(running: RunningEngine) -> None:
    """Each service wrote its JSON lines to its own file, not through circus; the terminal showed them, and
    the orders as counts in one `activity` line (no line per order by default)."""
    logs, terminal = running.run_dir / "logs", running.log.read_text()
    for name in ("ingest", "matcher", "persister", "broadcaster"):
        text = (logs / f"{name}.log").read_text()
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["event"] for line in lines if line.get("event") in ("start", "stop")] == ["start", "stop"], name
        assert {line["service"] for line in lines} == {name}
        # Up to the last line, written while the engine stopped after Ctrl-C.
        assert text.splitlines()[-1] in terminal, name
        assert not [line for line in (logs / f"{name}.stderr.log").read_text().splitlines() if line.startswith("{")]
    ingest = [json.loads(line) for line in (logs / "ingest.log").read_text().splitlines()]
    assert not [line for line in ingest if line.get("event") in ("accepted", "replayed")]
    counts: dict[str, int] = {}
    for line in ingest:
        if line.get("event") == "activity":
            for key, n in line["counts"].items():
                counts[key] = counts.get(key, 0) + n
    assert counts == {"accepted": 2, "replayed": 1, "cancel_requested": 1}


async def test_scale_workers_and_automatic_restart(running: RunningEngine, redis: Redis, key_prefix: str) -> None:
    keys = instrument_keys(key_prefix, "BTC-USD")
    assert "persister workers: 3" in running.make("scale-workers", "N=3")
    running.wait_until(lambda: all(http_ok(f"{running.persister_metrics(w)}/healthz") for w in (1, 2, 3)),
                       30, "three persister workers healthy")
    for _ in range(100):
        if await active_consumers(redis, keys.trades) == 3:
            break
        await asyncio.sleep(0.1)
    names = sorted(c["name"].decode() for c in await redis.xinfo_consumers(keys.trades, PERSISTER_GROUP))
    assert names == ["persister-1", "persister-2", "persister-3"]

    assert "persister workers: 1" in running.make("scale-workers", "N=1")
    # circus chooses which workers go; the one left keeps its name and port.
    running.wait_until(lambda: sum(http_ok(f"{running.persister_metrics(w)}/healthz") for w in (1, 2, 3)) == 1,
                       30, "two workers stopped")
    await asyncio.sleep(3.5)  # longer than active_consumers' idle bound
    # Redis 7.0 refreshes a consumer's idle time when entries reach it: make some trades.
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as http:
        for side, key in (("sell", B), ("buy", A)):
            client = "client-B" if key is B else "client-A"
            placed = await http.post("/orders", headers=key, json={
                "client_id": client, "instrument": "BTC-USD", "side": side, "type": "limit",
                "price": "10.00", "quantity": "1"})
            assert placed.status_code == 201
        for _ in range(100):
            if await redis.xlen(keys.trades) and await active_consumers(redis, keys.trades) == 1:
                break
            await asyncio.sleep(0.05)
    assert await active_consumers(redis, keys.trades) == 1, await redis.xinfo_consumers(keys.trades, PERSISTER_GROUP)

    [matcher] = running.pids("matcher")
    os.kill(matcher, signal.SIGKILL)
    running.wait_until(lambda: running.pids("matcher") not in ([], [matcher])
                       and http_ok(f"{running.matcher_metrics}/healthz"), 30, "matcher restarted")
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as http:
        # Within the shipped 10% price band around the last trade (10.00): the restarted matcher rests it.
        placed = await http.post("/orders", headers=A, json={
            "client_id": "client-A", "instrument": "BTC-USD", "side": "buy", "type": "limit",
            "price": "9.50", "quantity": "1"})
        order_id = placed.json()["order_id"]
        for _ in range(100):
            if (await http.get(f"/orders/{order_id}", headers=A)).json()["status"] == "open":
                break
            await asyncio.sleep(0.05)
        assert (await http.get(f"/orders/{order_id}", headers=A)).json()["status"] == "open"


def test_a_run_directory_too_deep_for_a_unix_socket_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    env = engine_env("", None, None, deep)
    for command in ("stop", "background"):
        done = subprocess.run(["bash", "scripts/run.sh", command], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "longer than 107 bytes" in done.stderr and "ENGINE_RUN_DIR" in done.stderr
    # An ipc:// override of a short path is taken as given.
    short = {**env, "CIRCUS_ENDPOINT": f"ipc://{tmp_path}/c.sock", "CIRCUS_PUBSUB_ENDPOINT": f"ipc://{tmp_path}/p.sock"}
    done = subprocess.run(["bash", "scripts/run.sh", "stop"], cwd=REPO_ROOT, env=short, capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, f"no engine running at ipc://{tmp_path}/c.sock\n")
