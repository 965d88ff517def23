"""The engine's own processes under an older Redis: ingest, matcher and persister run as users run them; an
older copy of the instrument's Redis state is restored under them, and the restarted matcher heals it."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import group_lag
from services.common.instruments import Instruments
from services.common.keys import MATCHER_GROUP, instrument_keys
from services.common.wire import fields_to_dict
from tests.conftest import TWO_INSTRUMENTS
from tests.matcher.recovery_state import backup, restore
from tests.matcher.test_heal import APPLIED_TWICE, assert_postgresql_consistent
from tests.persister.workload import wait_until_read
from tests.processes import Service, free_port

SYMBOL = "BTC-USD"
BROKER = {"Authorization": "Bearer demo-broker"}


class Engine:
    """ingest, matcher and persister processes with the test's prefix, database and ports."""

    def __init__(self, redis_url: str, prefix: str, db_url: str, logs: Path) -> None:
        ports = {name: free_port() for name in ("matcher", "persister", "ingest")}
        common = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix, "DATABASE_URL": db_url,
                  "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS), "LOG_LEVEL": "INFO"}
        env = {
            "matcher": {"MATCHER_METRICS_PORT": str(ports["matcher"]), "MATCHER_BLOCK_MS": "200"},
            "persister": {"PERSISTER_METRICS_PORT": str(ports["persister"]), "PERSISTER_BLOCK_MS": "200",
                          "PERSISTER_RETENTION_INTERVAL_S": "0", "PERSISTER_SNAPSHOT_INTERVAL_S": "0"},
            "ingest": {"INGEST_PORT": str(ports["ingest"]), "RATE_LIMIT_PER_SEC": "0", "CANCEL_WAIT_MS": "2000"},
        }
        health = {"matcher": "/healthz", "persister": "/healthz", "ingest": "/readyz"}
        self.url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        self.logs = logs
        self.services = {name: Service(name, {**common, **env[name]}, self.url[name] + health[name],
                                       logs / f"{name}.log") for name in ports}

    async def start(self, name: str) -> None:
        await asyncio.to_thread(self.services[name].start, 30)

    async def stop(self, name: str) -> None:
        assert await asyncio.to_thread(self.services[name].stop) == 0

    def log_lines(self, name: str, event: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in (self.logs / f"{name}.log").read_text().splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line.get("event") == event]


class Traders:
    """Orders through ingest's HTTP API, as clients send them; every acknowledged order id is kept."""

    def __init__(self, http: httpx.AsyncClient, seed: int) -> None:
        self.http = http
        self.rng = random.Random(seed)
        self.acknowledged: list[str] = []
        self.commands = 0  # commands put on the orders stream (new orders and requested cancels)

    async def place(self, count: int, markets: int = 0) -> None:
        for n in range(count):
            side = self.rng.choice(("buy", "sell"))
            body: dict[str, object] = {"client_id": f"client-{self.rng.randint(1, 4)}", "instrument": SYMBOL,
                                       "side": side, "quantity": str(Decimal(self.rng.randint(1, 40)) / 10)}
            if n < markets:
                body["type"] = "market"
            else:
                # Buys lean above 50000 and sells below: about a third cross, the rest build depth.
                lean = 3 if side == "buy" else -3
                body.update(type="limit", price=f"{50000 + lean + self.rng.randint(-10, 10)}.00")
            answer = await self.http.post("/orders", headers=BROKER, json=body)
            assert answer.status_code == 201, answer.text
            self.acknowledged.append(answer.json()["order_id"])
            self.commands += 1

    async def cancel_some(self, count: int) -> None:
        for order_id in self.rng.sample(self.acknowledged, count):
            answer = await self.http.post(f"/orders/{order_id}/cancel", headers=BROKER)
            assert answer.status_code in (200, 409), answer.text
            self.commands += answer.status_code == 200


async def matched(redis: Redis, prefix: str) -> None:
    """The matcher has applied every command on the orders stream."""
    keys = instrument_keys(prefix, SYMBOL)
    for _ in range(300):
        if await group_lag(redis, keys.orders, MATCHER_GROUP) == (0, 0):
            break
        await asyncio.sleep(0.05)
    assert await group_lag(redis, keys.orders, MATCHER_GROUP) == (0, 0)


async def settled(redis: Redis, instruments: Instruments, prefix: str) -> None:
    """The matcher has applied every command and the persister has written every trade and event."""
    await matched(redis, prefix)
    await wait_until_read(redis, instruments, prefix, 30)


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        return str(answer.read().decode())


async def entries_added(redis: Redis, key: str) -> int:
    return int((await redis.xinfo_stream(key))["entries-added"])


@pytest.mark.slow
async def test_an_older_redis_restored_under_the_engine_is_healed(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine, db_url: str,
        tmp_path: Path) -> None:
    engine = Engine(redis_url, key_prefix, db_url, tmp_path)
    keys = instrument_keys(key_prefix, SYMBOL)
    for name in ("matcher", "persister", "ingest"):  # the matcher first: ingest is ready once its group exists
        await engine.start(name)
    try:
        async with httpx.AsyncClient(base_url=engine.url["ingest"], timeout=10) as http:
            traders = Traders(http, seed=11)
            await traders.place(150)
            await traders.cancel_some(10)
            await settled(redis, instruments, key_prefix)

            # The copy is taken while trades and events wait for the persister and commands for the matcher.
            await engine.stop("persister")
            await traders.place(40)
            # Applied before the stop: a command still unread when the matcher stops sits after the copy's position
            # too, and would count among the skipped ones below (seen once in CI: 16 for 15).
            await matched(redis, key_prefix)
            await engine.stop("matcher")
            await traders.place(15)
            older = await backup(redis, key_prefix, SYMBOL)
            meta_then = fields_to_dict(await redis.hgetall(keys.meta))
            commands_then = await entries_added(redis, keys.orders)

            await engine.start("matcher")
            await engine.start("persister")
            await traders.place(150, markets=10)
            await traders.cancel_some(20)
            await settled(redis, instruments, key_prefix)
            commands_since = await entries_added(redis, keys.orders) - commands_then

            # Redis comes back with the older copy; ingest keeps accepting orders before the matcher restarts.
            await engine.stop("matcher")
            await restore(redis, key_prefix, SYMBOL, older)
            await traders.place(10)
            await engine.start("matcher")
            [healed] = engine.log_lines("matcher", "redis_healed")
            served = await asyncio.to_thread(metrics, engine.url["matcher"])
            await traders.place(100, markets=10)
            await traders.cancel_some(10)
            await settled(redis, instruments, key_prefix)

            statuses = {}
            for order_id in traders.acknowledged:
                answer = await http.get(f"/orders/{order_id}", headers=BROKER)
                assert answer.status_code == 200, (order_id, answer.text)
                statuses[order_id] = answer.json()["status"]
    finally:
        for service in engine.services.values():
            service.stop()

    assert healed["level"] == "warning"
    assert (healed["redis_trade_seq"], healed["redis_event_seq"]) == (int(meta_then["trade_seq"]),
                                                                      int(meta_then["event_seq"]))
    assert healed["commands_skipped"] == 15  # accepted before the copy, applied after it: not again
    assert healed["commands_only_in_postgresql"] == commands_since
    assert healed["records_awaiting_command"] == 10
    assert healed["records_corrected"] > 15 and healed["merge_failed"] == 0
    assert (healed["missing_trades"], healed["missing_events"], healed["orders_lost"]) == (0, 0, 0)
    assert 'matcher_redis_heals_total{instrument="BTC-USD"} 1.0' in served
    assert 'matcher_heal_missing{instrument="BTC-USD",kind="orders"} 0.0' in served
    assert len(engine.log_lines("matcher", "redis_durability")) == 3  # one per matcher start

    async with db.connect() as conn:
        assert (await conn.execute(APPLIED_TWICE)).all() == []
        stored = dict((await conn.execute(text("SELECT order_id, status FROM orders"))).all())
        new_trades = (await conn.execute(text("SELECT trade_id, seq FROM trades WHERE seq > :s ORDER BY seq"),
                                         {"s": healed["trade_seq"]})).all()
    # Every acknowledged order is in PostgreSQL, and ingest answers what PostgreSQL holds.
    assert statuses == {order_id: stored[order_id] for order_id in traders.acknowledged}
    # Every trade made after the heal is in PostgreSQL with a new seq: none was dropped as a duplicate.
    entries = [fields_to_dict(raw) for _, raw in await redis.xrange(keys.trades)]
    streamed = [(f["trade_id"], int(f["seq"])) for f in entries if int(f["seq"]) > healed["trade_seq"]]
    assert [tuple(r) for r in new_trades] == streamed and len(streamed) > 10
    assert streamed[0][1] == healed["trade_seq"] + 1
    await assert_postgresql_consistent(db, redis, instruments, keys, min_levels=3)
