"""The dead man's switch across the whole engine (`make run`, two instruments): POST
/clients/{client_id}/cancel-all-after arms it, the matcher's idle sweep cancels every resting order of the
client within 2 s after the deadline (reason dead_man_switch), a refresh postpones it, 0 disarms it."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.common.keys import deadline_of_client, instrument_keys
from tests.conftest import TWO_INSTRUMENTS
from tests.e2e.engine import RunningEngine

pytestmark = pytest.mark.timeout(180)

BROKER = {"Authorization": "Bearer demo-broker"}
SWEEP_BOUND_MS = 2000  # the contract: cancelled within 2 s after the deadline


@pytest.fixture
def engine_instruments() -> Path:
    return TWO_INSTRUMENTS


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def _arm(client: httpx.AsyncClient, client_id: str, timeout_ms: int) -> dict[str, Any]:
    answer = await client.post(f"/clients/{client_id}/cancel-all-after", json={"timeout_ms": timeout_ms},
                               headers=BROKER)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert (body["client_id"], body["armed"]) == (client_id, timeout_ms > 0)
    return body


async def _place(client: httpx.AsyncClient, client_id: str, instrument: str = "BTC-USD") -> str:
    price = "100.00" if instrument == "BTC-USD" else "3000.05"
    order = {"client_id": client_id, "instrument": instrument, "side": "buy", "type": "limit", "price": price,
             "quantity": "1"}
    answer = await client.post("/orders", json=order, headers=BROKER)
    assert answer.status_code == 201, answer.text
    order_id: str = answer.json()["order_id"]
    return order_id


async def _order(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    view: dict[str, Any] = (await client.get(f"/orders/{order_id}", headers=BROKER)).json()
    return view


async def _wait_resting(client: httpx.AsyncClient, order_ids: list[str]) -> None:
    deadline = time.monotonic() + 10
    while [(await _order(client, o))["status"] for o in order_ids] != ["open"] * len(order_ids):
        assert time.monotonic() < deadline, order_ids
        await asyncio.sleep(0.05)


async def _wait_cancelled(client: httpx.AsyncClient, order_id: str, deadline_ms: int) -> dict[str, Any]:
    """Poll until the order is final; it must be cancelled by the switch within SWEEP_BOUND_MS of the deadline."""
    give_up = time.monotonic() + (deadline_ms - time.time() * 1000) / 1000 + 5
    while (view := await _order(client, order_id))["status"] == "open":
        assert time.monotonic() < give_up, view
        await asyncio.sleep(0.05)
    assert (view["status"], view["reason"]) == ("cancelled", "dead_man_switch"), view
    assert deadline_ms <= _ms(view["updated_at"]) <= deadline_ms + SWEEP_BOUND_MS, (view, deadline_ms)
    return view


async def test_fires_within_2_s_refresh_postpones_and_0_disarms(running: RunningEngine, redis: Redis,
                                                                 key_prefix: str) -> None:
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as client:
        fired = [await _place(client, "dms-fired"), await _place(client, "dms-fired", "ETH-USD")]
        refreshed = await _place(client, "dms-refreshed")
        disarmed = await _place(client, "dms-disarmed")
        bystander = await _place(client, "dms-none")
        await _wait_resting(client, [*fired, refreshed, disarmed, bystander])

        fired_deadline = _ms((await _arm(client, "dms-fired", 1000))["deadline"])
        refresh_deadline = _ms((await _arm(client, "dms-refreshed", 1000))["deadline"])
        await _arm(client, "dms-disarmed", 1000)
        assert (await _arm(client, "dms-disarmed", 0))["deadline"] is None

        # The switch fires on every instrument; meanwhile the other client refreshes it every 300 ms.
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            refresh_deadline = _ms((await _arm(client, "dms-refreshed", 1000))["deadline"])
            await asyncio.sleep(0.3)
        for order_id in fired:
            await _wait_cancelled(client, order_id, fired_deadline)
        assert (await _order(client, refreshed))["status"] == "open"
        # Fired: disarmed, on every instrument.
        member = deadline_of_client("dms-fired")
        for symbol in ("BTC-USD", "ETH-USD"):
            assert await redis.zscore(instrument_keys(key_prefix, symbol).deadlines, member) is None

        # No more refreshes: it fires after the last deadline.
        await _wait_cancelled(client, refreshed, refresh_deadline)
        assert (await _order(client, disarmed))["status"] == "open"
        assert (await _order(client, bystander))["status"] == "open"
