"""Cancel-on-disconnect through the whole engine (`make run`): the real matcher's sweep cancels the live orders of
a closed cancel-on-disconnect socket within 1 s, and within 5 s when the ingest process is killed with SIGKILL
(circus then restarts it); a socket without it, and the client's HTTP orders, keep theirs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from services.common.keys import instrument_keys
from services.common.wire import decode_record
from tests.e2e.engine import RunningEngine, http_ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KEY_A = {"Authorization": "Bearer demo-key-A"}


def order(price: str, **fields: Any) -> dict[str, Any]:
    return {"client_id": "client-A", "instrument": "BTC-USD", "side": "buy", "type": "limit", "price": price,
            "quantity": "0.01", **fields}


@contextlib.asynccontextmanager
async def trade_socket(engine: RunningEngine, cod: bool) -> AsyncIterator[ClientConnection]:
    url = engine.ingest.replace("http://", "ws://") + "/trade" + ("?cancel_on_disconnect=true" if cod else "")
    async with connect(url, additional_headers=KEY_A) as ws:
        authenticated = json.loads(await ws.recv())
        assert authenticated["type"] == "authenticated" and authenticated["cancel_on_disconnect"] is cod
        yield ws


async def place(ws: ClientConnection, price: str) -> str:
    await ws.send(json.dumps({"id": price, "op": "place", "order": order(price)}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["id"] == price and reply["status"] == 201, reply
    order_id: str = reply["body"]["order_id"]
    return order_id


async def states(redis: Redis, key_prefix: str, order_ids: list[str]) -> list[tuple[str, str]]:
    """Each order's (status, reason) from its live record in Redis: readable while ingest is down."""
    order_state = instrument_keys(key_prefix, "BTC-USD").order_state
    records = [decode_record(raw) for raw in await redis.hmget(order_state, order_ids)]
    return [(record.status, record.reason) for record in records]


async def until(redis: Redis, key_prefix: str, order_ids: list[str], state: tuple[str, str], within: float) -> float:
    """Seconds until every order is in `state`; fails after `within`."""
    started = time.monotonic()
    while set(await states(redis, key_prefix, order_ids)) != {state}:
        if time.monotonic() - started > within:
            raise AssertionError(f"not {state} within {within} s: {await states(redis, key_prefix, order_ids)}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_cancel_on_disconnect_on_a_close_and_on_a_killed_ingest(running: RunningEngine, redis: Redis,
                                                                       key_prefix: str) -> None:
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as http:
        kept = [(await http.post("/orders", headers=KEY_A, json=order("10.00"))).json()["order_id"]]
    async with trade_socket(running, cod=False) as plain:
        kept.append(await place(plain, "10.01"))

    # A clean close: cancelled (reason disconnect) within 1 s, by the matcher's own sweep.
    async with trade_socket(running, cod=True) as cod:
        closed_ids = [await place(cod, "11.00"), await place(cod, "11.01")]
        await until(redis, key_prefix, closed_ids + kept, ("open", ""), 10)
    took = await until(redis, key_prefix, closed_ids, ("cancelled", "disconnect"), 1.0)
    assert took < 1.0

    # SIGKILL of ingest with a cancel-on-disconnect socket open: nothing refreshes the session's deadline any more,
    # so its orders are cancelled within 5 s, by the matcher alone (circus restarts ingest meanwhile).
    async with trade_socket(running, cod=True) as cod:
        killed_ids = [await place(cod, "12.00"), await place(cod, "12.01")]
        await until(redis, key_prefix, killed_ids, ("open", ""), 10)
        [ingest] = running.pids("ingest")
        os.kill(ingest, signal.SIGKILL)
        took = await until(redis, key_prefix, killed_ids, ("cancelled", "disconnect"), 5.0)
        assert took < 5.0
        with contextlib.suppress(Exception):
            await cod.close()
    running.wait_until(lambda: running.pids("ingest") not in ([], [ingest]) and http_ok(f"{running.ingest}/readyz"),
                       30, "ingest restarted")
    assert await states(redis, key_prefix, kept) == [("open", "")] * 2
