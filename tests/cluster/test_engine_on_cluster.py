"""The whole engine (`make run`, tests/e2e/engine.py) with REDIS_MODE=cluster on the local 3-master cluster of
tests/cluster/conftest.py: 3 instruments on 3 masters end to end, and an instrument's slot moved under flow."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
import websockets
from redis.asyncio import RedisCluster
from sqlalchemy.engine import make_url

from services.common.db import drop_database, with_database
from services.common.keys import instrument_keys
from tests.cluster.conftest import LocalCluster, slot_of
from tests.e2e.engine import RunningEngine, engine_env, pipeline_drained, running_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEYS = {"client-A": "Bearer demo-key-A", "client-B": "Bearer demo-key-B"}


@pytest.fixture
async def cluster_db(postgres_server_url: str) -> AsyncIterator[str]:
    """A database that does not exist yet (`make run` creates and migrates it); dropped afterwards."""
    url = with_database(postgres_server_url, f"test_cluster_{uuid.uuid4().hex[:10]}")
    yield url
    await drop_database(url)


@pytest.fixture
def cluster_engine(redis_cluster: LocalCluster, cluster_symbols: list[str], cluster_prefix: str, cluster_db: str,
                   tmp_path: Path) -> Iterator[RunningEngine]:
    """`make run` with REDIS_MODE=cluster, REDIS_URL a node of the cluster, instruments `cluster_symbols`."""
    env = engine_env(cluster_prefix, redis_cluster.url, cluster_db, tmp_path)
    env["REDIS_MODE"] = "cluster"
    env["INSTRUMENTS_FILE"] = str(redis_cluster.instruments_toml(cluster_symbols, tmp_path / "instruments.toml"))
    with running_engine(env, tmp_path) as engine:
        yield engine


def limit(client_id: str, symbol: str, side: str, price: str, quantity: str, key: str | None = None
          ) -> dict[str, str]:
    body = {"client_id": client_id, "instrument": symbol, "side": side, "type": "limit", "price": price,
            "quantity": quantity}
    if key is not None:
        body["idempotency_key"] = key
    return body


async def wait_for(condition: Any, within: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"not {what} within {within}s")


@dataclass
class Stored:
    orders: Counter[str]  # order id -> rows (the primary key: 1 each)
    trades: dict[str, list[tuple[str, int]]]  # instrument -> (trade id, seq), by seq


async def stored(database_url: str, symbols: list[str]) -> Stored:
    conn = await asyncpg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(False))
    try:
        orders = Counter(row["order_id"] for row in await conn.fetch("SELECT order_id FROM orders"))
        trades = {s: [(r["trade_id"], r["seq"]) for r in await conn.fetch(
            "SELECT trade_id, seq FROM trades WHERE instrument = $1 ORDER BY seq", s)] for s in symbols}
    finally:
        await conn.close()
    return Stored(orders, trades)


async def stream_trades(redis: RedisCluster, prefix: str, symbol: str) -> list[tuple[str, int]]:
    """(trade id, seq) of every entry of the instrument's trades stream, read as a user would, by XREAD."""
    stream, after, found = instrument_keys(prefix, symbol).trades, "0-0", []
    while reply := cast(Any, await redis.xread({stream: after}, count=500)):
        for entry_id, fields in reply[0][1]:
            found.append((fields[b"trade_id"].decode(), int(fields[b"seq"])))
            after = entry_id.decode()
    return found


async def test_three_instruments_on_three_masters_end_to_end(
        cluster_engine: RunningEngine, redis_cluster: LocalCluster, cluster_symbols: list[str],
        cluster_prefix: str, cluster_db: str, cluster_client: RedisCluster) -> None:
    pairs = 5
    ws_url = f"ws://127.0.0.1:{cluster_engine.env['BROADCASTER_PORT']}/stream"
    seen: dict[str, list[int]] = {s: [] for s in cluster_symbols}
    async with websockets.connect(ws_url, open_timeout=5) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": ["trades"], "instruments": cluster_symbols}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        acknowledged: list[str] = []
        async with httpx.AsyncClient(base_url=cluster_engine.ingest, timeout=10) as http:
            for n in range(pairs):
                for symbol in cluster_symbols:
                    for client_id, side in (("client-B", "sell"), ("client-A", "buy")):
                        answer = await http.post("/orders", headers={"Authorization": KEYS[client_id]},
                                                 json=limit(client_id, symbol, side, f"{100 + n}.00", "0.1"))
                        assert answer.status_code == 201, answer.text
                        acknowledged.append(answer.json()["order_id"])

        async def every_trade_seen() -> bool:
            while sum(map(len, seen.values())) < pairs * len(cluster_symbols):
                decoded = json.loads(await ws.recv())
                for message in decoded if isinstance(decoded, list) else [decoded]:
                    if message["type"] == "trade":
                        seen[message["instrument"]].append(int(message["seq"]))
                        assert Decimal(message["quantity"]) == Decimal("0.1")
            return True

        await asyncio.wait_for(every_trade_seen(), 30)
    assert seen == {s: list(range(1, pairs + 1)) for s in cluster_symbols}

    # Each instrument's keys live on its own master, and only there.
    masters = {redis_cluster.master_of(s) for s in cluster_symbols}
    assert len(masters) == 3
    for symbol in cluster_symbols:
        slot = slot_of(symbol)
        holders = [p for p in redis_cluster.nodes if redis_cluster.client(p).cluster("COUNTKEYSINSLOT", slot)]
        assert holders == [redis_cluster.master_of(symbol)], (symbol, holders)

    await wait_for(lambda: pipeline_drained(cluster_client, cluster_prefix, cluster_symbols), 30, "drained")
    in_db = await stored(cluster_db, cluster_symbols)
    assert in_db.orders == Counter(acknowledged)  # every order once, and nothing else
    for symbol in cluster_symbols:
        on_stream = await stream_trades(cluster_client, cluster_prefix, symbol)
        assert [seq for _, seq in on_stream] == list(range(1, pairs + 1))
        assert in_db.trades[symbol] == on_stream


# Resharding ----------------------------------------------------------------------------------------------------


@dataclass
class Flow:
    """Orders POSTed to one instrument at a steady rate, each retried with its idempotency key until acknowledged."""

    symbol: str
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> order id
    acknowledged_at: list[float] = field(default_factory=list)  # monotonic time of each acknowledgement
    statuses: Counter[int] = field(default_factory=Counter)
    refused: list[tuple[float, int, str]] = field(default_factory=list)  # (time, status, body) of each non-2xx
    slowest: tuple[float, float] = (0.0, 0.0)  # (seconds, when): the longest POST to acknowledgement
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def place(http: httpx.AsyncClient, flow: Flow, n: int) -> None:
    client_id = ("client-A", "client-B")[n % 2]
    side = ("buy", "sell")[n % 2]
    # A third crossing, the rest resting around 100.00.
    price = ("101.00" if side == "buy" else "99.00") if n % 3 == 0 else (
        f"{99 - n % 7}.00" if side == "buy" else f"{101 + n % 7}.00")
    body = limit(client_id, flow.symbol, side, price, "0.01", key=f"reshard-{n}-{uuid.uuid4().hex[:8]}")
    first = time.monotonic()
    while True:
        try:
            answer = await http.post("/orders", headers={"Authorization": KEYS[client_id]}, json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.05)
            continue
        flow.statuses[answer.status_code] += 1
        if answer.status_code in (200, 201, 202):
            flow.acknowledged[body["idempotency_key"]] = answer.json()["order_id"]
            flow.acknowledged_at.append(time.monotonic())
            flow.slowest = max(flow.slowest, (time.monotonic() - first, first))
            return
        flow.refused.append((time.monotonic(), answer.status_code, answer.text[:200]))
        if answer.status_code != 503 or not answer.headers.get("retry-after"):
            flow.refused.append((time.monotonic(), 0, "a refusal other than 503 with Retry-After"))
            return
        await asyncio.sleep(float(answer.headers.get("retry-after", "0.1")) / 10)


async def order_flow(base: str, flow: Flow, rate: float) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        n, next_at = 0, time.monotonic()
        while not flow.stop.is_set():
            await place(http, flow, n)
            n += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def follow_trades(url: str, symbol: str, seqs: list[int]) -> None:
    """A WebSocket client of the instrument's trades from its first one (since_seq 0), until cancelled."""
    async with websockets.connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": ["trades"], "instruments": [symbol],
                                  "since_seq": 0}))
        async for frame in ws:
            decoded = json.loads(frame)
            for message in decoded if isinstance(decoded, list) else [decoded]:
                if message["type"] == "trade":
                    seqs.append(int(message["seq"]))
                assert message["type"] != "error", message


def paced_move(cluster: LocalCluster, symbol: str, target: int, batch: int = 10, pause_s: float = 0.05) -> None:
    """Move `symbol`'s slot as `redis-cli --cluster reshard` does (IMPORTING/MIGRATING, MIGRATE 10 keys at a time,
    SETSLOT NODE everywhere), pausing between batches as a slot of many keys would take: the instrument's scripts
    meet TRYAGAIN (the migration guard) all along."""
    move = cluster.begin_move(symbol, target)
    source = cluster.client(move.source)
    while keys := source.cluster("GETKEYSINSLOT", move.slot, batch):
        source.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", *keys)
        time.sleep(pause_s)
    move.finish()


async def test_moving_an_instruments_slot_under_flow_loses_and_doubles_nothing(
        cluster_engine: RunningEngine, redis_cluster: LocalCluster, cluster_symbols: list[str],
        cluster_prefix: str, cluster_db: str, cluster_client: RedisCluster) -> None:
    symbol = cluster_symbols[0]
    source = redis_cluster.master_of(symbol)
    target = next(p for p in redis_cluster.nodes if p != source)
    try:
        await move_under_flow(cluster_engine, redis_cluster, cluster_prefix, cluster_db, cluster_client, symbol,
                              target)
    finally:
        # The session's other tests find their 3 symbols on 3 masters as the cluster was made.
        await asyncio.to_thread(redis_cluster.move_slot, symbol, source)


async def move_under_flow(engine: RunningEngine, redis_cluster: LocalCluster, prefix: str, database_url: str,
                          client: RedisCluster, symbol: str, target: int) -> None:
    source = redis_cluster.master_of(symbol)
    flow = Flow(symbol)
    followed: list[int] = []
    follower = asyncio.create_task(follow_trades(f"ws://127.0.0.1:{engine.env['BROADCASTER_PORT']}/stream", symbol,
                                                 followed))
    senders = [asyncio.create_task(order_flow(engine.ingest, flow, 50)) for _ in range(4)]  # ~200/s
    try:
        await asyncio.sleep(3)
        before = len(flow.acknowledged)
        started = time.monotonic()
        keys_moved = redis_cluster.client(source).cluster("COUNTKEYSINSLOT", slot_of(symbol))
        await asyncio.to_thread(paced_move, redis_cluster, symbol, target)
        ended = time.monotonic()
        assert redis_cluster.master_of(symbol) == target
        await asyncio.sleep(3)
    finally:
        flow.stop.set()
        await asyncio.gather(*senders)
    after_move = sum(1 for at in flow.acknowledged_at if at > ended)

    await wait_for(lambda: pipeline_drained(client, prefix, [symbol]), 60, "drained")
    in_db = await stored(database_url, [symbol])
    keys = instrument_keys(prefix, symbol)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(keys.orders))
    commands = Counter(f[b"order_id"].decode() for _, f in entries if f[b"cmd"] == b"new")
    on_stream = await stream_trades(client, prefix, symbol)
    refused_during = [r for r in flow.refused if started - 0.5 <= r[0] <= ended + 0.5]
    print(f"\nreshard of {symbol} (slot {slot_of(symbol)}, {keys_moved} keys) {source} -> {target}: "
          f"move {ended - started:.2f}s, slowest order {flow.slowest[0]:.2f}s (at +{flow.slowest[1] - started:.2f}s), "
          f"acknowledged {before} before, {len(flow.acknowledged)} in all, {after_move} after the move; "
          f"statuses {dict(flow.statuses)}; refused {len(flow.refused)} ({len(refused_during)} during the move): "
          f"{flow.refused[:3]}; trades {len(on_stream)}")

    acknowledged = Counter(flow.acknowledged.values())
    assert max(acknowledged.values()) == 1  # no two keys answered with one order
    assert in_db.orders == acknowledged  # every acknowledged order stored once, nothing else
    assert commands == acknowledged  # and on the orders stream once
    assert [seq for _, seq in on_stream] == list(range(1, len(on_stream) + 1))  # gapless
    assert in_db.trades[symbol] == on_stream
    assert len(on_stream) > 0 and after_move > 100  # it kept trading after the move
    assert not [r for r in flow.refused if r[1] != 503], flow.refused  # no other refusal, no 500
    # The broadcaster followed the instrument across the move: every trade once, in order.
    async def all_followed() -> bool:
        if follower.done():
            follower.result()  # its error, if it failed
        return len(followed) >= len(on_stream)

    try:
        await wait_for(all_followed, 15, "every trade on the WebSocket")
    finally:
        follower.cancel()
    assert followed == [seq for _, seq in on_stream]
    assert all(started - 0.5 <= at <= ended + 1 for at, _, _ in flow.refused), flow.refused  # only during the move
