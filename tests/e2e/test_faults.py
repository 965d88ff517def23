"""Supervision and durability under faults: the whole engine on its own Redis and PostgreSQL (`make run`),
kill -9 of those servers under a steady flow of orders, and a stop/start that keeps the book.

CONTRACT.md: an order answered 2xx survives kill -9 of any process, Redis and PostgreSQL included; a killed
server is restarted by the supervisor and every service recovers by itself, losing and doubling nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from redis.asyncio import Redis

from services.common.keys import instrument_keys
from services.common.redis_conn import connect
from tests.e2e.engine import RunningEngine, engine_env, http_ok, pipeline_drained, running_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]

logger = logging.getLogger(__name__)

SYMBOL = "BTC-USD"
KEYS = {"client-A": "demo-key-A", "client-B": "demo-key-B"}
CLIENTS = 6
RATE_PER_CLIENT = 50  # orders/s: 300/s in all
BROKER = {"Authorization": "Bearer demo-broker"}  # reads any client's orders
RETRY_PAUSE_S = 0.1  # clients retry faster than Retry-After asks, so the longest outage is measured finely


@dataclass(frozen=True)
class OwnServers:
    engine: RunningEngine
    redis_url: str
    database_url: str  # asyncpg's form


def own_servers(engine: RunningEngine) -> OwnServers:
    env = engine.env
    return OwnServers(engine, f"redis://127.0.0.1:{env['ENGINE_REDIS_PORT']}/0",
                      f"postgresql://postgres@127.0.0.1:{env['ENGINE_PG_PORT']}/trading")


@pytest.fixture
def engine(own_run_dir: Path) -> Iterator[RunningEngine]:
    """`make run` on its own Redis and PostgreSQL (no URL given), data under own_run_dir/data."""
    with running_engine(engine_env("", None, None, own_run_dir), own_run_dir, timeout=90) as running:
        yield running


@contextlib.asynccontextmanager
async def redis_of(servers: OwnServers) -> AsyncIterator[Redis]:
    client = connect(servers.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# The flow ------------------------------------------------------------------------------------------


@dataclass
class Flow:
    """What the order clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    read_statuses: Counter[int] = field(default_factory=Counter)  # GETs from Redis and from PostgreSQL
    bad: list[str] = field(default_factory=list)  # answers the contract forbids
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> order id
    retried: set[str] = field(default_factory=set)  # keys that needed more than one attempt
    cancel_statuses: Counter[int] = field(default_factory=Counter)
    cancelled: set[str] = field(default_factory=set)  # orders a cancel answered 200 for
    connection_errors: int = 0
    max_outage_s: float = 0.0  # longest time one order took from its first attempt to its answer
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def order_body(rng: random.Random, n: int, client_id: str) -> dict[str, Any]:
    """A limit order for BTC-USD: about 60% rest (bids under 50,000, asks over), 40% cross the spread."""
    side = rng.choice(("buy", "sell"))
    crossing = rng.random() < 0.4
    offset = Decimal(rng.randint(1, 100))
    if side == "buy":
        price = Decimal(50_100) if crossing else Decimal(50_000) - offset
    else:
        price = Decimal(49_900) if crossing else Decimal(50_000) + offset
    return {"idempotency_key": f"fault-{n}-{uuid.uuid4().hex}", "client_order_id": f"co-{n}",
            "client_id": client_id, "instrument": SYMBOL, "side": side, "type": "limit",
            "price": f"{price}.00", "quantity": f"0.0{rng.randint(1, 9)}"}


async def place(http: httpx.AsyncClient, flow: Flow, body: dict[str, Any], headers: dict[str, str]) -> str:
    """POST until 201/200, the same body and key each time; every answer recorded."""
    key = body["idempotency_key"]
    first = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            answer = await http.post("/orders", json=body, headers=headers)
        except httpx.TransportError:
            flow.connection_errors += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        flow.statuses[answer.status_code] += 1
        if answer.status_code in (200, 201):
            if attempts > 1:
                flow.retried.add(key)
                flow.max_outage_s = max(flow.max_outage_s, time.monotonic() - first)
            if answer.status_code == 200 and answer.headers.get("idempotent-replayed") != "true":
                flow.bad.append(f"200 without Idempotent-Replayed for {key}: {answer.text}")
            order_id: str = answer.json()["order_id"]
            return order_id
        if answer.status_code == 503:
            if not answer.headers.get("retry-after"):
                flow.bad.append(f"503 without Retry-After: {answer.text}")
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        flow.bad.append(f"{answer.status_code} for {key}: {answer.text}")
        return ""


async def cancel(http: httpx.AsyncClient, flow: Flow, order_id: str, headers: dict[str, str]) -> None:
    """Cancel until answered other than 503: 200 cancelled, 202 pending, 409 final (filled, or cancelled by an
    attempt whose answer was a 503)."""
    while True:
        try:
            answer = await http.post(f"/orders/{order_id}/cancel", headers=headers)
        except httpx.TransportError:
            flow.connection_errors += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        flow.cancel_statuses[answer.status_code] += 1
        if answer.status_code == 503:
            if not answer.headers.get("retry-after"):
                flow.bad.append(f"cancel: 503 without Retry-After: {answer.text}")
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        if answer.status_code == 200:
            flow.cancelled.add(order_id)
        elif answer.status_code not in (202, 409):
            flow.bad.append(f"cancel of {order_id}: {answer.status_code} {answer.text}")
        return


async def order_client(base: str, flow: Flow, index: int) -> None:
    """Orders at RATE_PER_CLIENT, and a cancel of one of its earlier orders after every tenth."""
    rng = random.Random(index)
    client_id = ("client-A", "client-B")[index % 2]
    headers = {"Authorization": f"Bearer {KEYS[client_id]}"}
    n = index
    mine: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        next_at = time.monotonic()
        while not flow.stop.is_set():
            body = order_body(rng, n, client_id)
            order_id = await place(http, flow, body, headers)
            if order_id:
                flow.acknowledged[body["idempotency_key"]] = order_id
                mine.append(order_id)
                if body["idempotency_key"] in flow.retried:
                    # The first answer may have been lost on the way: the same request again must name
                    # the same order, whatever happened to the attempts before.
                    again = await place(http, flow, body, headers)
                    if again != order_id:
                        flow.bad.append(f"{body['idempotency_key']} answered {order_id} then {again}")
            if len(flow.acknowledged) % 10 == 0 and mine:
                await cancel(http, flow, mine.pop(rng.randrange(len(mine))), headers)
            n += CLIENTS
            next_at += 1 / RATE_PER_CLIENT
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def reader_client(base: str, flow: Flow) -> None:
    """GETs served from Redis (book, live order) and from PostgreSQL (trades, ticker): 200 or 503 only."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while not flow.stop.is_set():
            paths = [f"/trades?instrument={SYMBOL}&limit=5", f"/orderbook?instrument={SYMBOL}&levels=5",
                     f"/analytics/{SYMBOL}/ticker"]
            if flow.acknowledged:
                paths.append(f"/orders/{next(reversed(flow.acknowledged.values()))}")
            for path in paths:
                try:
                    answer = await http.get(path, headers=BROKER)
                except httpx.TransportError:
                    flow.connection_errors += 1
                    continue
                flow.read_statuses[answer.status_code] += 1
                if answer.status_code == 503 and not answer.headers.get("retry-after"):
                    flow.bad.append(f"GET {path}: 503 without Retry-After")
                elif answer.status_code not in (200, 503):
                    flow.bad.append(f"GET {path}: {answer.status_code} {answer.text[:300]}")
            await asyncio.sleep(0.05)


@dataclass
class Follower:
    """A WebSocket client following trades, resuming with since_seq after every disconnect."""

    url: str
    seqs: list[int] = field(default_factory=list)
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)  # e.g. a replay refused while Redis is away
    ws: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            since = self.seqs[-1] if self.seqs else 0
            try:
                async with websockets.connect(self.url, open_timeout=5) as ws:
                    self.ws = ws
                    await ws.send(json.dumps({"op": "subscribe", "channels": ["trades"], "instruments": [SYMBOL],
                                              "since_seq": since}))
                    async for frame in ws:
                        if not self.receive(frame):
                            break  # the subscription failed: connect and subscribe again
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            self.ws = None
            if not stop.is_set():
                self.reconnects += 1
                await asyncio.sleep(0.2)

    def receive(self, frame: str | bytes) -> bool:
        decoded = json.loads(frame)
        for message in decoded if isinstance(decoded, list) else [decoded]:
            if message["type"] == "trade":
                self.seqs.append(int(message["seq"]))
            elif message["type"] == "error":
                self.errors.append(message["message"])
                return False
        return True

    async def drop(self) -> None:
        """Close the connection as a flaky network would: the client resumes with since_seq."""
        if self.ws is not None:
            await self.ws.close()


# Faults ---------------------------------------------------------------------------------------------


async def wait_for(condition: Any, within: float, what: str, interval: float = 0.1) -> float:
    """Poll `condition()` (sync or async) until true; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"not {what} after {within}s")


async def kill_server(engine: RunningEngine, watcher: str, answers: Any, follower: Follower | None) -> float:
    """kill -9 the server; the seconds until circus has restarted it and `answers()` holds."""
    [pid] = await asyncio.to_thread(engine.pids, watcher)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    if follower is not None:
        # The WebSocket client loses its connection too, and resubscribes while the server is away.
        await follower.drop()

    async def restarted() -> bool:
        pids = await asyncio.to_thread(engine.pids, watcher)
        return bool(pids) and pids != [pid] and bool(await answers())

    await wait_for(restarted, 60, f"{watcher} restarted", interval=0.2)
    return time.monotonic() - killed


async def postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


# Checks ---------------------------------------------------------------------------------------------


async def check_stored(servers: OwnServers, redis: Redis, flow: Flow, follower: Follower
                       ) -> tuple[dict[str, int], list[str]]:
    """After the drain: the figures for the summary, and every way the stored state is wrong."""
    keys = instrument_keys("", SYMBOL)
    conn = await asyncpg.connect(servers.database_url)
    try:
        orders = await conn.fetch("SELECT order_id, client_order_id, filled_quantity, status FROM orders")
        stored_trades = await conn.fetch("SELECT trade_id, seq, price, quantity, buy_order_id, sell_order_id "
                                         "FROM trades WHERE instrument = $1 ORDER BY seq", SYMBOL)
        fills = dict(await conn.fetch(
            "SELECT order_id, sum(quantity) FROM (SELECT buy_order_id AS order_id, quantity FROM trades "
            "UNION ALL SELECT sell_order_id, quantity FROM trades) f GROUP BY order_id"))
    finally:
        await conn.close()
    problems: list[str] = []

    acknowledged = set(flow.acknowledged.values())
    if len(acknowledged) != len(flow.acknowledged):
        problems.append("two idempotency keys were answered with one order id")
    stored = {row["order_id"] for row in orders}
    missing = acknowledged - stored
    # An order nobody was told about, or a client_order_id stored twice: an attempt placed twice.
    extra = stored - acknowledged
    doubled = [c for c, n in Counter(row["client_order_id"] for row in orders).items() if n > 1]
    if missing:
        problems.append(f"{len(missing)} acknowledged orders missing from PostgreSQL: {sorted(missing)[:5]}")
    if extra or doubled:
        problems.append(f"doubled orders: {sorted(extra)[:5]}, client_order_ids {doubled[:5]}")
    commands = Counter(f[b"order_id"].decode() for _, f in await redis.xrange(keys.orders) if f[b"cmd"] == b"new")
    if set(commands) != acknowledged or max(commands.values()) != 1:
        problems.append("the orders stream does not hold each acknowledged order exactly once")

    seqs = [row["seq"] for row in stored_trades]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append("trade seqs in PostgreSQL have gaps or repeats")
    in_redis = [(f[b"trade_id"].decode(), int(f[b"seq"]), Decimal(f[b"price"].decode()),
                 Decimal(f[b"quantity"].decode()), f[b"buy_order_id"].decode(), f[b"sell_order_id"].decode())
                for _, f in await redis.xrange(keys.trades)]
    if [tuple(row) for row in stored_trades] != in_redis:
        problems.append(f"PostgreSQL's {len(seqs)} trades differ from the Redis stream's {len(in_redis)}")
    wrong_fills = [(row["order_id"], row["filled_quantity"], fills.get(row["order_id"], 0)) for row in orders
                   if row["filled_quantity"] != fills.get(row["order_id"], 0)]
    if wrong_fills:
        problems.append(f"filled_quantity differs from the sum of the order's trades: {wrong_fills[:5]}")
    not_cancelled = [row["order_id"] for row in orders if row["order_id"] in flow.cancelled
                     and row["status"] != "cancelled"]
    if not_cancelled:
        problems.append(f"orders answered 200 to a cancel are not cancelled in PostgreSQL: {not_cancelled[:5]}")
    if follower.seqs != seqs:
        seen = Counter(follower.seqs)
        twice = sorted(s for s, n in seen.items() if n > 1)
        problems.append(f"the WebSocket client saw {len(follower.seqs)} trades, {len(seqs)} stored: missed "
                        f"{sorted(set(seqs) - set(seen))[:10]}, twice {twice[:10]}")
    return {"orders": len(acknowledged), "trades": len(seqs), "missing": len(missing),
            "doubled": len(extra) + len(doubled)}, problems


async def test_killing_redis_and_postgresql_under_load_loses_and_doubles_nothing(engine: RunningEngine) -> None:
    servers = own_servers(engine)
    flow = Flow()
    follower = Follower(f"ws://127.0.0.1:{engine.env['BROADCASTER_PORT']}/stream")
    follow_stop = asyncio.Event()
    follow_task = asyncio.create_task(follower.run(follow_stop))
    clients = [asyncio.create_task(order_client(engine.ingest, flow, i)) for i in range(CLIENTS)]
    clients.append(asyncio.create_task(reader_client(engine.ingest, flow)))
    outages: list[str] = []
    services = ("ingest", "matcher", "persister", "broadcaster")
    pids = {name: await asyncio.to_thread(engine.pids, name) for name in services}

    async def ingest_answers() -> bool:
        return await asyncio.to_thread(http_ok, f"{engine.ingest}/readyz")

    async def postgres_up() -> bool:
        return await postgres_answers(servers.database_url)

    try:
        await asyncio.sleep(4)
        # The WebSocket client stays connected through the second Redis restart, and reconnects in the others.
        for watcher, answers, drop in (("redis", ingest_answers, follower), ("redis", ingest_answers, None),
                                       ("postgres", postgres_up, follower)):
            took = await kill_server(engine, watcher, answers, drop)
            outages.append(f"{watcher} {took:.1f}s")
            await asyncio.sleep(4)
        await asyncio.sleep(2)
    finally:
        flow.stop.set()
        await asyncio.gather(*clients)
    stopped = time.monotonic()
    # Each service reconnected by itself: none crashed for circus to restart.
    assert {name: await asyncio.to_thread(engine.pids, name) for name in services} == pids

    async with redis_of(servers) as redis:
        await wait_for(lambda: pipeline_drained(redis, "", [SYMBOL]), 60, "drained")
        drain_s = time.monotonic() - stopped
        top = (await redis.xrevrange(instrument_keys("", SYMBOL).trades, count=1))
        top_seq = int(top[0][1][b"seq"]) if top else 0
        await wait_for(lambda: bool(follower.seqs) and follower.seqs[-1] >= top_seq, 20, "WebSocket caught up")
        follow_stop.set()
        follow_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow_task
        figures, problems = await check_stored(servers, redis, flow, follower)
    # Reads from PostgreSQL work again: ingest's pool replaced the connections that died with the server.
    async with httpx.AsyncClient(base_url=engine.ingest, timeout=10) as http:
        newest = await http.get("/trades", params={"instrument": SYMBOL, "limit": "1"})

    summary = (f"fault summary: orders acknowledged {figures['orders']}, trades {figures['trades']}, "
               f"kills {len(outages)} ({', '.join(outages)} until restarted and answering), "
               f"missing {figures['missing']}, doubled {figures['doubled']}, drain {drain_s:.1f}s, "
               f"POST statuses {dict(flow.statuses)}, 503s {flow.statuses[503]}, GET statuses "
               f"{dict(flow.read_statuses)}, cancel statuses {dict(flow.cancel_statuses)}, "
               f"connection errors {flow.connection_errors}, retried orders "
               f"{len(flow.retried)}, max outage seen by a client {flow.max_outage_s:.1f}s, WebSocket "
               f"reconnects {follower.reconnects} (replays refused while Redis was away {len(follower.errors)})")
    logger.warning(summary)
    print(summary)
    assert not problems, problems
    assert not flow.bad, flow.bad[:10]
    assert set(flow.statuses) <= {200, 201, 503}
    # The only error a client may see: its replay refused while Redis was away (it subscribed again).
    assert all(e.startswith(f"cannot replay the trades of {SYMBOL}") for e in follower.errors), follower.errors
    assert newest.status_code == 200 and newest.json()[0]["seq"] == figures["trades"], newest.text
    # Entries a lost XREADGROUP reply left pending must not wait for XAUTOCLAIM (30 s) to be persisted.
    assert drain_s < 10


# Stop and start ---------------------------------------------------------------------------------------


async def settled(http: httpx.AsyncClient, order_ids: list[str], statuses: dict[str, str]) -> dict[str, Any]:
    """The orders as GET /orders/{id} shows them, once the matcher has given each its expected status."""
    views: dict[str, Any] = {}

    async def all_there() -> bool:
        for order_id in order_ids:
            views[order_id] = (await http.get(f"/orders/{order_id}", headers=BROKER)).json()
        return all(views[o]["status"] == statuses[o] for o in order_ids)

    await wait_for(all_there, 10, f"orders {statuses}")
    return views


async def test_stop_and_start_keep_the_book_and_the_open_orders(engine: RunningEngine) -> None:
    def limit(client: str, side: str, price: str, quantity: str) -> dict[str, str]:
        return {"client_id": client, "instrument": SYMBOL, "side": side, "type": "limit", "price": price,
                "quantity": quantity}

    async with httpx.AsyncClient(base_url=engine.ingest, timeout=10) as http:
        placed: dict[str, str] = {}
        for name, body in (("b1", limit("client-A", "buy", "49990.00", "0.3")),
                           ("b2", limit("client-A", "buy", "49980.00", "0.2")),
                           ("s1", limit("client-B", "sell", "50010.00", "0.1")),
                           ("s2", limit("client-B", "sell", "50010.00", "0.2")),
                           ("s3", limit("client-B", "sell", "50020.00", "0.5")),
                           ("hit", limit("client-B", "sell", "49990.00", "0.1"))):  # leaves b1 partially filled
            answer = await http.post("/orders", json=body, headers=BROKER)
            assert answer.status_code == 201, answer.text
            placed[name] = answer.json()["order_id"]
            if name == "s3":  # b1 rests before the sell that hits it
                await settled(http, [placed["b1"]], {placed["b1"]: "open"})
        expected = {placed[n]: "open" for n in ("b2", "s1", "s2", "s3")}
        expected |= {placed["b1"]: "partially_filled", placed["hit"]: "filled"}
        before = await settled(http, list(placed.values()), expected)
        book_before = (await http.get("/orderbook", params={"instrument": SYMBOL, "levels": "50"})).json()
    assert book_before["bids"] == [{"price": "49990.00", "quantity": "0.2", "cumulative": "0.2"},
                                   {"price": "49980.00", "quantity": "0.2", "cumulative": "0.4"}]
    assert [(a["price"], a["quantity"]) for a in book_before["asks"]] == [("50010.00", "0.3"), ("50020.00", "0.5")]

    redis_pid = (await asyncio.to_thread(engine.pids, "redis"))[0]
    await asyncio.to_thread(engine.make, "stop")
    assert engine.process is not None
    assert await asyncio.to_thread(engine.process.wait, 60) in (0, 2)
    assert not http_ok(f"{engine.ingest}/healthz")
    # The services stop first (each finishes its batch on a live Redis and PostgreSQL), then the data servers.
    stopped = re.findall(r"circus\[\d+\] \[INFO\] (\w+) stopped", engine.log.read_text())
    assert sorted(stopped[:4]) == ["broadcaster", "ingest", "matcher", "persister"], stopped
    await asyncio.to_thread(engine.start, 90)  # the same ENGINE_RUN_DIR and ports
    assert (await asyncio.to_thread(engine.pids, "redis"))[0] != redis_pid

    async with httpx.AsyncClient(base_url=engine.ingest, timeout=10) as http:
        book_after = (await http.get("/orderbook", params={"instrument": SYMBOL, "levels": "50"})).json()
        assert book_after == book_before
        after = {o: (await http.get(f"/orders/{o}", headers=BROKER)).json() for o in placed.values()}
        assert after == before

        # A buy crossing the asks trades with the orders from before the stop, in price-time priority.
        taker = await http.post("/orders", json=limit("client-A", "buy", "50010.00", "0.15"), headers=BROKER)
        assert taker.status_code == 201, taker.text
        statuses = {placed["s1"]: "filled", placed["s2"]: "partially_filled", taker.json()["order_id"]: "filled"}
        views = await settled(http, list(statuses), statuses)
        assert views[placed["s2"]]["filled_quantity"] == "0.05"

        async def trades_stored() -> bool:
            return len((await http.get("/trades", params={"instrument": SYMBOL})).json()) == 3

        await wait_for(trades_stored, 20, "three trades persisted")
        trades = (await http.get("/trades", params={"instrument": SYMBOL})).json()
    # Newest first; sequences go on from before the stop.
    assert [(t["seq"], t["sell_order_id"], t["quantity"]) for t in trades] == [
        (3, placed["s2"], "0.05"), (2, placed["s1"], "0.1"), (1, placed["hit"], "0.1")]
