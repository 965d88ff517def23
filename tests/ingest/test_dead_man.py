"""POST /clients/{client_id}/cancel-all-after: the deadline in every instrument's deadlines zset, the answers, and
the matcher's sweep (driven by hand here; tests/e2e/test_dead_man_switch.py runs the whole engine)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from services.common.keys import deadline_of_client
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine

URL = "/clients/client-A/cancel-all-after"


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def _deadlines(engine: Engine, client_id: str = "client-A") -> dict[str, float | None]:
    member = deadline_of_client(client_id)
    return {s: await engine.redis.zscore(k.deadlines, member) for s, k in engine.keys.items()}


async def test_arm_refresh_and_disarm(engine: Engine) -> None:
    before = time.time() * 1000
    response = await engine.client.post(URL, json={"timeout_ms": 60000}, headers=KEY_A)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["client_id"], body["armed"], set(body)) == ("client-A", True, {"client_id", "armed", "deadline"})
    deadline = _ms(body["deadline"])
    assert before + 60000 - 1 <= deadline <= time.time() * 1000 + 60000
    assert body["deadline"].endswith("Z") and len(body["deadline"]) == 24
    assert await _deadlines(engine) == {"BTC-USD": deadline, "ETH-USD": deadline}

    refreshed = (await engine.client.post(URL, json={"timeout_ms": 3_600_000}, headers=BROKER)).json()
    assert _ms(refreshed["deadline"]) >= deadline + 3_600_000 - 60_000
    assert set((await _deadlines(engine)).values()) == {_ms(refreshed["deadline"])}

    response = await engine.client.post(URL, json={"timeout_ms": 0}, headers=ADMIN)
    assert (response.status_code, response.json()) == (200, {"client_id": "client-A", "armed": False,
                                                             "deadline": None})
    assert await _deadlines(engine) == {"BTC-USD": None, "ETH-USD": None}
    # Disarming a switch that is not armed is harmless.
    assert (await engine.client.post(URL, json={"timeout_ms": 0}, headers=KEY_A)).json()["armed"] is False


@pytest.mark.parametrize("body", [{"timeout_ms": 999}, {"timeout_ms": 1}, {"timeout_ms": 3_600_001},
                                  {"timeout_ms": -1}, {"timeout_ms": "60000"}, {"timeout_ms": 1000.5},
                                  {"timeout_ms": True}, {}, {"timeout_ms": 1000, "other": 1}])
async def test_422_names_timeout_ms(engine: Engine, body: dict[str, Any]) -> None:
    response = await engine.client.post(URL, json=body, headers=KEY_A)
    assert response.status_code == 422, response.text
    field = "other" if "other" in body else "timeout_ms"
    assert response.json()["details"][0]["field"] == field
    assert await _deadlines(engine) == {"BTC-USD": None, "ETH-USD": None}


async def test_bounds_are_allowed(engine: Engine) -> None:
    for timeout in (1000, 3_600_000):
        assert (await engine.client.post(URL, json={"timeout_ms": timeout}, headers=KEY_A)).status_code == 200


async def test_roles_and_bad_bodies(engine: Engine) -> None:
    assert (await engine.client.post(URL, json={"timeout_ms": 1000})).status_code == 401
    response = await engine.client.post("/clients/client-B/cancel-all-after", json={"timeout_ms": 1000},
                                        headers=KEY_A)
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    assert (await engine.client.post("/clients/client-B/cancel-all-after", json={"timeout_ms": 1000},
                                     headers=KEY_B)).status_code == 200
    assert (await engine.client.post("/clients/a%20b/cancel-all-after", json={"timeout_ms": 1000},
                                     headers=ADMIN)).status_code == 404
    assert (await engine.client.post(URL, content=b"{", headers=KEY_A)).status_code == 400
    assert (await engine.client.post(URL, content=b"1" * 17000, headers=KEY_A)).status_code == 413
    assert (await engine.client.get(URL, headers=KEY_A)).status_code == 405
    assert await _deadlines(engine) == {"BTC-USD": None, "ETH-USD": None}


async def test_the_sweep_cancels_resting_orders_once_the_deadline_passed(engine: Engine) -> None:
    a1 = (await engine.place(KEY_A, price="100.00"))["order_id"]
    a2 = (await engine.place(KEY_A, instrument="ETH-USD", side="sell", price="3000.05", quantity="1"))["order_id"]
    b1 = (await engine.place(client_id="client-B", price="100.00"))["order_id"]
    await engine.drain()
    assert (await engine.client.post(URL, json={"timeout_ms": 1000}, headers=KEY_A)).status_code == 200
    await engine.drain()
    assert (await engine.get(a1)).json()["status"] == "open"  # not due yet
    # Due: the next match.lua call sweeps it, with or without commands to apply.
    member = deadline_of_client("client-A")
    for keys in engine.keys.values():
        await engine.redis.zadd(keys.deadlines, {member: time.time() * 1000 - 1})
    await engine.drain()
    for order_id in (a1, a2):
        view = (await engine.get(order_id)).json()
        assert (view["status"], view["reason"]) == ("cancelled", "dead_man_switch")
    assert (await engine.get(b1, BROKER)).json()["status"] == "open"
    # The switch is disarmed once it fired: a later order of the client rests.
    assert await _deadlines(engine) == {"BTC-USD": None, "ETH-USD": None}
    later = (await engine.place(KEY_A, price="100.00"))["order_id"]
    await engine.drain()
    assert (await engine.get(later)).json()["status"] == "open"
