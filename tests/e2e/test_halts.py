"""The kill switches across the whole engine (`make run`, two instruments; issue 16): a client halt with
cancel_open cancels the client's resting orders through the real matcher (reason halted), an instrument halt
refuses its orders, and both survive kill -9 of ingest and of the matcher (circus restarts them)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TWO_INSTRUMENTS
from tests.e2e.engine import RunningEngine, http_ok

pytestmark = pytest.mark.timeout(180)

BROKER = {"Authorization": "Bearer demo-broker"}
ADMIN = {"Authorization": "Bearer demo-admin"}


@pytest.fixture
def engine_instruments() -> Path:
    return TWO_INSTRUMENTS


def _order(client_id: str, instrument: str = "BTC-USD") -> dict[str, Any]:
    return {"client_id": client_id, "instrument": instrument, "side": "buy", "type": "limit",
            "price": "100.00" if instrument == "BTC-USD" else "3000.05", "quantity": "1"}


async def _status(client: httpx.AsyncClient, order_id: str) -> tuple[str, str | None]:
    view = (await client.get(f"/orders/{order_id}", headers=BROKER)).json()
    return view["status"], view["reason"]


def _restart(engine: RunningEngine, watcher: str) -> None:
    (pid,) = engine.pids(watcher)
    os.kill(pid, signal.SIGKILL)
    engine.wait_until(lambda: engine.pids(watcher) not in ([], [pid]), 60, f"{watcher} restarted")


async def test_halts_cancel_through_the_matcher_and_survive_kills(running: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=running.ingest, timeout=10) as client:
        placed = [(await client.post("/orders", json=_order("client-A", s), headers=BROKER)).json()["order_id"]
                  for s in ("BTC-USD", "ETH-USD")]
        deadline = time.monotonic() + 10
        while [await _status(client, o) for o in placed] != [("open", None)] * 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        halted = await client.post("/admin/clients/client-A/halt", json={"cancel_open": True}, headers=ADMIN)
        assert halted.status_code == 200, halted.text
        assert sorted(halted.json()["cancelled"]) == sorted(placed)
        assert [await _status(client, o) for o in placed] == [("cancelled", "halted")] * 2
        assert (await client.post("/admin/instruments/ETH-USD/halt", headers=ADMIN)).json() == {
            "instrument": "ETH-USD", "halted": True}

        for watcher in ("ingest", "matcher"):
            _restart(running, watcher)
        running.wait_until(lambda: http_ok(f"{running.ingest}/readyz"), 60, "ingest ready")

        refused = await client.post("/orders", json=_order("client-A"), headers=BROKER)
        assert (refused.status_code, refused.json()["error"]) == (403, "client_halted")
        refused = await client.post("/orders", json=_order("client-B", "ETH-USD"), headers=BROKER)
        assert (refused.status_code, refused.json()["error"]) == (409, "instrument_halted")
        assert (await client.post("/orders", json=_order("client-B"), headers=BROKER)).status_code == 201
        metrics = (await client.get("/metrics")).text
        assert "halted_clients 1.0" in metrics and "halted_instruments 1.0" in metrics

        assert (await client.delete("/admin/clients/client-A/halt", headers=ADMIN)).status_code == 200
        assert (await client.delete("/admin/instruments/ETH-USD/halt", headers=ADMIN)).status_code == 200
        assert (await client.post("/orders", json=_order("client-A", "ETH-USD"), headers=BROKER)).status_code == 201
