"""The four services as real processes on free ports, with a key prefix and a database of their own."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect

from services.common.db import create_database, drop_database, with_database
from tests.processes import Service, free_port

A = {"Authorization": "Bearer demo-key-A"}
B = {"Authorization": "Bearer demo-key-B"}
# Looks like a real key; no log line may ever carry it (nor the demo keys above).
SECRET_KEY = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0-SECRET"
RATE_LIMIT_BURST = 20


@dataclass
class Engine:
    ingest: str
    broadcaster: str
    matcher: str
    persister: str
    services: dict[str, Service]
    facts: dict[str, str] = field(default_factory=dict)  # ids the traffic produced



def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class EngineFactory(Protocol):
    def __call__(self, label: str, env: dict[str, str] | None = None) -> Awaitable[Engine]:
        """The four services with their own prefix and database; `env` is added to every service's."""


@pytest.fixture(scope="package")
async def start_engine(redis: Redis, redis_url: str, database_url: str,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EngineFactory]:
    """start_engine(label, env) -> the four services running with their own prefix and database."""
    started: list[tuple[Engine, str, str]] = []

    async def start(label: str, env: dict[str, str] | None = None) -> Engine:
        prefix = f"test-ops-{uuid.uuid4().hex[:8]}:"
        db_url = with_database(database_url, f"{make_url(database_url).database}_{uuid.uuid4().hex[:8]}")
        await create_database(db_url, template=database_url)
        log_dir = tmp_path_factory.mktemp(label)
        ports = {name: free_port() for name in ("ingest", "broadcaster", "matcher", "persister")}
        common = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix, "DATABASE_URL": db_url, "LOG_LEVEL": "INFO",
                  **(env or {})}
        envs = {
            "matcher": {"MATCHER_METRICS_PORT": str(ports["matcher"]), "MATCHER_MONITOR_INTERVAL_S": "0.2"},
            "persister": {"PERSISTER_METRICS_PORT": str(ports["persister"]), "PERSISTER_LAG_EVERY_S": "0.2"},
            "broadcaster": {"BROADCASTER_PORT": str(ports["broadcaster"]), "BROADCASTER_READ_BLOCK_MS": "200"},
            "ingest": {"INGEST_PORT": str(ports["ingest"]), "RATE_LIMIT_PER_SEC": "5",
                       "RATE_LIMIT_BURST": str(RATE_LIMIT_BURST)},
        }
        health = {"matcher": "/healthz", "persister": "/healthz", "broadcaster": "/readyz", "ingest": "/readyz"}
        services: dict[str, Service] = {}
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        engine = Engine(url["ingest"], url["broadcaster"], url["matcher"], url["persister"], services)
        started.append((engine, prefix, db_url))
        # The matcher first: ingest is ready only once the matcher group exists.
        for name in ("matcher", "persister", "broadcaster", "ingest"):
            services[name] = Service(name, {**common, **envs[name]}, f"http://127.0.0.1:{ports[name]}{health[name]}",
                                     log_dir / f"{name}.log")
            await asyncio.to_thread(services[name].start, 30)
        return engine

    yield start
    for engine, prefix, db_url in started:
        for service in engine.services.values():
            service.stop()
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await drop_database(db_url)


async def _until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not {what} after {seconds}s")
        await asyncio.sleep(0.1)


def order(client: str, side: str, price: str, quantity: str, **extra: object) -> dict[str, object]:
    return {"client_id": client, "instrument": "BTC-USD", "side": side, "type": "limit", "price": price,
            "quantity": quantity, **extra}


async def _recv_until(ws: ClientConnection, kind: str) -> dict[str, object]:
    while True:
        raw = json.loads(await asyncio.wait_for(ws.recv(), 10))
        for message in raw if isinstance(raw, list) else [raw]:
            if message["type"] == kind:
                return dict(message)


async def drive_traffic(engine: Engine) -> None:
    """Every kind of event the metrics and logs must show: trades, replays, rejections, cancels, 429s, 401s."""
    facts = engine.facts
    ws_url = engine.broadcaster.replace("http", "ws") + "/stream"
    async with httpx.AsyncClient(base_url=engine.ingest, timeout=10) as http, connect(ws_url) as ws:
        await ws.send(json.dumps({"op": "auth", "api_key": SECRET_KEY}))
        assert (await _recv_until(ws, "error"))["message"] == "invalid API key"
        await ws.send(json.dumps({"op": "auth", "api_key": SECRET_KEY, "unknown": SECRET_KEY}))
        await _recv_until(ws, "error")
        await ws.send(json.dumps({"op": "subscribe", "channels": ["trades", "orderbook_deltas"],
                                  "instruments": ["BTC-USD"]}))
        await _recv_until(ws, "subscribed")

        for headers in ({"Authorization": f"Bearer {SECRET_KEY}"}, {"Authorization": f"Token {SECRET_KEY}"},
                        {"Authorization": SECRET_KEY}):
            refused = await http.post("/orders", headers=headers, json=order("client-A", "buy", "1.00", "1"))
            assert refused.status_code == 401
            assert (await http.get("/orders/O-unknown", headers=headers)).status_code in (401, 404)
        assert (await http.post("/orders", headers=A, json=order("client-A", "buy", "-1", "1"))).status_code == 422
        assert (await http.post("/orders", headers=A, json=order("client-B", "buy", "1.00", "1"))).status_code == 403

        sell = await http.post("/orders", headers=B, json=order("client-B", "sell", "50000.00", "0.2"))
        body = order("client-A", "buy", "50000.00", "0.5", idempotency_key="ops-idem-1")
        buy = await http.post("/orders", headers=A, json=body)
        replay = await http.post("/orders", headers=A, json=body)
        assert (sell.status_code, buy.status_code, replay.status_code) == (201, 201, 200)
        facts.update(sell=sell.json()["order_id"], buy=buy.json()["order_id"])
        trade = await _recv_until(ws, "trade")
        facts["trade"] = str(trade["trade_id"])

        ask = await http.post("/orders", headers=B, json=order("client-B", "sell", "51000.00", "1"))
        crossing = await http.post("/orders", headers=A, json=order("client-A", "buy", "51000.00", "1",
                                                                    post_only=True))
        assert (ask.status_code, crossing.status_code) == (201, 201)
        facts["post_only"] = crossing.json()["order_id"]
        cancel = await http.post(f"/orders/{facts['buy']}/cancel", headers=A)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"

        # Far above the book, but within the shipped 10% price band around the trade at 50,000.00: they rest.
        statuses = [(await http.post("/orders", headers=B, json=order("client-B", "sell", "54000.00", "0.001")))
                    .status_code for _ in range(RATE_LIMIT_BURST + 5)]
        assert 429 in statuses and 201 in statuses, statuses
        facts["burst_accepted"] = str(statuses.count(201))

        async def persisted() -> bool:
            trades = (await http.get("/trades", params={"instrument": "BTC-USD"})).json()
            return [t["trade_id"] for t in trades] == [facts["trade"]]

        await _until(persisted, "the trade persisted")

        async def rejected() -> bool:
            found = (await http.get(f"/orders/{facts['post_only']}", headers=A)).json()
            return bool(found["status"] == "rejected")

        await _until(rejected, "the post-only order rejected")
    # The workers' gauges are sampled every 0.2 s; the persister's batch with the cancel is written.
    await asyncio.sleep(1.0)
