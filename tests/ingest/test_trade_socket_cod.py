"""Cancel-on-disconnect over the order-entry socket against real Redis: the session's deadline armed before
`authenticated` and kept LEASE_MS ahead while the socket lives; a clean close gets every live order placed
through the socket cancelled (reason `disconnect`) within 1 s, an ingest process killed with SIGKILL within
5 s; orders of a socket without cancel-on-disconnect, and the client's other orders, stay.

The matcher is driven as its worker drives it while idle: one match.lua call (which sweeps the deadlines
first) every MATCHER_SWEEP_MS (250 ms by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from services.common.keys import deadline_of_session, instrument_keys
from services.common.wire import decode_record, fields_to_dict
from services.ingest.trade_session import LEASE_MS
from services.matcher.engine import InstrumentMatcher
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import DEMO_KEYS, limit_order
from tests.ingest.trade_client import (  # noqa: F401 (fixtures)
    TradeClient,
    TradeServer,
    TradeServerFactory,
    make_trade_server_fixture,
    trade_fixture,
)
from tests.processes import Service, free_port

SWEEP_S = 0.25  # MATCHER_SWEEP_MS's default


def eth(**fields: Any) -> dict[str, Any]:
    return limit_order(**{"instrument": "ETH-USD", "price": "3000.05", "quantity": "0.01", **fields})


async def sessions_of(redis: Redis, key_prefix: str) -> dict[str, dict[str, float]]:
    """Every instrument's COD deadlines: symbol -> {member: score ms}."""
    out = {}
    for symbol in ("BTC-USD", "ETH-USD"):
        members = await redis.zrange(instrument_keys(key_prefix, symbol).deadlines, 0, -1, withscores=True)
        out[symbol] = {m.decode() if isinstance(m, bytes) else m: s for m, s in members
                       if (m.decode() if isinstance(m, bytes) else m).startswith("s:")}
    return out


async def place_some(ws: TradeClient) -> list[str]:
    """A resting BTC buy, a resting ETH sell, and a batch of two BTC buys: their order ids."""
    ids = [(await ws.call("place", order=limit_order(price="100.00")))["body"]["order_id"],
           (await ws.call("place", order=eth(side="sell", price="5000.00")))["body"]["order_id"]]
    batch = await ws.call("place_batch", orders=[limit_order(price="99.00"), limit_order(price="98.00")])
    ids += [r["order"]["order_id"] for r in batch["body"]["results"]]
    return ids


async def statuses(redis: Redis, key_prefix: str, order_ids: list[str]) -> list[tuple[str, str]]:
    """Each order's (status, reason), from its live record in Redis (readable with no ingest running)."""
    found: dict[str, tuple[str, str]] = {}
    for symbol in ("BTC-USD", "ETH-USD"):
        raws = await redis.hmget(instrument_keys(key_prefix, symbol).order_state, order_ids)
        for order_id, raw in zip(order_ids, raws, strict=True):
            if raw is not None:
                record = decode_record(raw)
                found[order_id] = (record.status, record.reason)
    return [found[order_id] for order_id in order_ids]


async def sweep_until_cancelled(matchers: list[InstrumentMatcher], redis: Redis, key_prefix: str,
                                order_ids: list[str], within: float) -> float:
    """Call match.lua on every instrument each SWEEP_S, as the idle matcher worker does, until every order is
    cancelled with reason `disconnect`; the seconds it took. Fails after `within` s."""
    started = time.monotonic()
    while True:
        for matcher in matchers:
            await matcher.step()
        if set(await statuses(redis, key_prefix, order_ids)) == {("cancelled", "disconnect")}:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not cancelled within {within} s: {await statuses(redis, key_prefix, order_ids)}")
        await asyncio.sleep(SWEEP_S)


async def test_the_session_is_armed_before_authenticated_and_refreshed(trade: TradeServer, redis: Redis,
                                                                       key_prefix: str) -> None:
    ws = await trade.open()
    before_ms = time.time_ns() // 1_000_000
    assert await ws.auth("demo-key-A", cancel_on_disconnect=True) == {
        "type": "authenticated", "role": "trader", "client_id": "client-A", "cancel_on_disconnect": True}
    deadlines = await sessions_of(redis, key_prefix)
    (member,) = deadlines["BTC-USD"]
    assert set(deadlines["ETH-USD"]) == {member}
    session = member.removeprefix("s:")
    assert member == deadline_of_session(session)
    first = deadlines["BTC-USD"][member]
    assert before_ms + LEASE_MS <= first <= time.time() * 1000 + LEASE_MS
    order_ids = await place_some(ws)
    for symbol, ids in (("BTC-USD", {order_ids[0], *order_ids[2:]}), ("ETH-USD", {order_ids[1]})):
        members = await redis.smembers(instrument_keys(key_prefix, symbol).session_orders(session))
        assert {m.decode() for m in members} == ids
    await asyncio.sleep(1.3)
    refreshed = (await sessions_of(redis, key_prefix))["BTC-USD"][member]
    assert refreshed > first


async def test_a_clean_close_cancels_its_orders_within_1_s(trade: TradeServer, redis: Redis,
                                                          key_prefix: str) -> None:
    engine = trade.engine
    cod = await trade.open()
    await cod.auth("demo-key-A", cancel_on_disconnect=True)
    plain = await trade.open()
    await plain.auth("demo-key-A")
    cod_ids = await place_some(cod)
    kept = [(await plain.call("place", order=limit_order(price="97.00")))["body"]["order_id"],
            (await engine.place(price="96.00"))["order_id"]]
    await engine.drain()
    assert set(await statuses(redis, key_prefix, cod_ids + kept)) == {("open", "")}
    # One more, still `accepted` (not yet seen by the matcher) when the socket closes.
    cod_ids.append((await cod.call("place", order=limit_order(price="95.00")))["body"]["order_id"])
    await cod.ws.close()
    took = await sweep_until_cancelled(list(engine.matchers.values()), redis, key_prefix, cod_ids, within=1.0)
    assert took < 1.0
    assert await statuses(redis, key_prefix, kept) == [("open", "")] * 2
    assert await sessions_of(redis, key_prefix) == {"BTC-USD": {}, "ETH-USD": {}}
    # The closed socket's session set is gone with its sweep.
    assert not [k async for k in redis.scan_iter(match=f"{key_prefix}cs:*")]


async def test_a_socket_without_cancel_on_disconnect_leaves_its_orders(trade: TradeServer, redis: Redis,
                                                                      key_prefix: str) -> None:
    engine = trade.engine
    ws = await trade.open(additional_headers={"Authorization": "Bearer demo-key-A"})
    assert (await ws.other())["cancel_on_disconnect"] is False
    order_ids = await place_some(ws)
    await ws.ws.close()
    for _ in range(6):
        await engine.drain()
        await asyncio.sleep(SWEEP_S)
    assert set(await statuses(redis, key_prefix, order_ids)) == {("open", "")}
    assert await sessions_of(redis, key_prefix) == {"BTC-USD": {}, "ETH-USD": {}}


async def test_cancel_on_disconnect_from_the_handshake_url(trade: TradeServer, redis: Redis, key_prefix: str) -> None:
    ws = await trade.open("?cancel_on_disconnect=true", additional_headers={"Authorization": "Bearer demo-broker"})
    assert await ws.other() == {"type": "authenticated", "role": "broker", "client_id": None,
                                "cancel_on_disconnect": True}
    order_ids = await place_some(ws)
    await trade.engine.drain()
    await ws.ws.close()
    assert await sweep_until_cancelled(list(trade.engine.matchers.values()), redis, key_prefix, order_ids, 1.0) < 1.0


async def test_places_in_flight_at_the_close_are_cancelled_too(trade: TradeServer, redis: Redis,
                                                             key_prefix: str) -> None:
    """A client that sends places and closes at once, without reading a reply: every order those places got
    on the stream carries the session and is cancelled by the close's sweep."""
    ws = await trade.open()
    await ws.auth("demo-key-A", cancel_on_disconnect=True)
    for n in range(30):
        await ws.request("place", order=limit_order(price=f"{50 + n}.00"))
    await ws.request("place_batch", orders=[limit_order(price="40.00"), limit_order(price="41.00")])
    await ws.ws.close()
    orders_key = instrument_keys(key_prefix, "BTC-USD").orders
    for _ in range(100):  # the server is still answering the requests the client did not wait for
        if await redis.xlen(orders_key) == 32:
            break
        await asyncio.sleep(0.02)
    entries = [fields_to_dict(fields) for _, fields in await redis.xrange(orders_key)]
    assert len(entries) == 32 and {entry["session"] for entry in entries} != {""}
    assert len({entry["session"] for entry in entries}) == 1
    order_ids = [entry["order_id"] for entry in entries]
    assert await sweep_until_cancelled(list(trade.engine.matchers.values()), redis, key_prefix, order_ids, 1.0) < 1.0


# SIGKILL of the ingest process ---------------------------------------------------------------------------------

@pytest.fixture
def ingest_process(redis_url: str, key_prefix: str, database_url: str, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    for name in ("API_KEYS_FILE", "ALLOW_DEMO_KEYS", "AUTH_MODE", "LOG_FILE"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url,
           "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS), "API_KEYS_FILE": str(DEMO_KEYS), "INGEST_PORT": str(port),
           "LOG_LEVEL": "WARNING"}
    service = Service("ingest", env, f"http://127.0.0.1:{port}/healthz", tmp_path / "ingest.log").start()
    yield service
    if service.process is not None and service.process.poll() is None:
        service.stop()


@contextlib.asynccontextmanager
async def socket_to(service: Service, query: str = "") -> AsyncIterator[TradeClient]:
    url = service.health_url.replace("http://", "ws://").replace("/healthz", "/trade") + query
    async with connect(url, additional_headers={"Authorization": "Bearer demo-key-A"}) as ws:
        yield TradeClient(ws)


async def test_a_killed_ingest_gets_its_sockets_orders_cancelled_within_5_s(
        ingest_process: Service, redis: Redis, key_prefix: str,
        make_trade_server: TradeServerFactory) -> None:
    # The matchers and a second, living ingest (to read orders and place one that must stay) in this process.
    survivor = await make_trade_server()
    matchers = list(survivor.engine.matchers.values())
    kept = (await survivor.engine.place(price="90.00"))["order_id"]
    async with socket_to(ingest_process, "?cancel_on_disconnect=true") as cod, socket_to(ingest_process) as plain:
        assert (await cod.other())["cancel_on_disconnect"] is True
        await plain.other()
        order_ids = await place_some(cod)
        plain_id = (await plain.call("place", order=limit_order(price="91.00")))["body"]["order_id"]
        await survivor.engine.drain()
        assert set(await statuses(redis, key_prefix, [*order_ids, plain_id, kept])) == {("open", "")}
        assert ingest_process.process is not None
        os.kill(ingest_process.process.pid, 9)
        killed = time.monotonic()
        ingest_process.process.wait(10)
        took = await sweep_until_cancelled(matchers, redis, key_prefix, order_ids, within=5.0)
    assert time.monotonic() - killed < 5.0 and took < 5.0
    assert await statuses(redis, key_prefix, [plain_id, kept]) == [("open", "")] * 2
    assert json.dumps(await sessions_of(redis, key_prefix)) == json.dumps({"BTC-USD": {}, "ETH-USD": {}})
