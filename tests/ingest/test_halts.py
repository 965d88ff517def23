"""The kill switches (issue 16) through HTTP, against real Redis and PostgreSQL, with the matcher driven by hand:
client and instrument halts refuse new orders and amends (403 client_halted / 409 instrument_halted) atomically
with acceptance, allow cancels and replays of earlier orders, cancel_open cancels resting orders (reason halted),
lifts, repeats, roles, metrics and log lines; halts survive an ingest restart and a Redis rebuilt from PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import halts
from services.matcher.recovery import recover_instrument
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine, EngineFactory, limit_order
from tests.ingest.test_amend import _patch
from tests.ingest.test_place_batch import results_of

CLIENT_A = "/admin/clients/client-A/halt"
BTC = "/admin/instruments/BTC-USD/halt"


@pytest.fixture
async def engine(make_engine: EngineFactory, db_url: str) -> Engine:
    # A database of the test's own: halts are rows there, and a rebuild reads them back.
    return await make_engine(database_url=db_url)


async def _matched(engine: Engine, request: Any) -> httpx.Response:
    """An answer that waits on the matcher (cancel_open, cancel, amend), with the matcher applying commands."""
    task = asyncio.ensure_future(request)
    while not task.done():
        await engine.drain()
        await asyncio.sleep(0.002)
    response: httpx.Response = await task
    return response


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["error"]) == (status, code), response.text


async def _metric(engine: Engine, name: str) -> float:
    text = (await engine.client.get("/metrics")).text
    rows = [row for row in text.splitlines() if row.startswith(name + " ")]
    return sum(float(row.split()[-1]) for row in rows)


async def _halt_rows(db_url: str) -> set[tuple[str, str]]:
    db = create_async_engine(db_url)
    try:
        async with db.connect() as conn:
            return {(r.scope, r.target) for r in await conn.execute(select(halts.c.scope, halts.c.target))}
    finally:
        await db.dispose()


async def test_a_client_halt_refuses_new_orders_and_amends_but_not_cancels_or_replays(
        engine: Engine, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    keyed = limit_order(idempotency_key="before-the-halt")
    first = await engine.post(keyed)
    assert first.status_code == 201
    resting = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    other = (await engine.place(KEY_B, client_id="client-B", price="100.00", quantity="1"))["order_id"]
    await engine.drain()

    with caplog.at_level(logging.INFO, logger="services.ingest.halts"):
        response = await engine.client.post(CLIENT_A, json={"cancel_open": False}, headers=ADMIN)
    assert (response.status_code, response.json()) == (200, {"client_id": "client-A", "halted": True,
                                                             "cancelled": []})
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "halt"]
    assert (line.__dict__["scope"], line.__dict__["client"], line.__dict__["by"]) == ("client", "client-A", "admin")
    assert await _halt_rows(db_url) == {("client", "client-A")}

    # New orders, on every instrument, by any key; a batch's orders each.
    _refused(await engine.post(limit_order()), 403, "client_halted")
    _refused(await engine.post(limit_order(instrument="ETH-USD", price="100.00", quantity="1"), BROKER),
             403, "client_halted")
    results = await results_of(engine, [limit_order(), limit_order(client_id="client-B")])
    assert [r["status"] for r in results] == [403, 201]
    assert results[0]["error"]["error"] == "client_halted"
    # The replay of an order accepted before the halt still gets its first answer.
    replay = await engine.post(keyed)
    assert (replay.status_code, replay.json()) == (200, first.json())
    assert replay.headers["idempotent-replayed"] == "true"
    # Amends of the client's orders are refused, whoever asks; other clients' are not.
    _refused(await _patch(engine, resting, {"quantity": "2"}, KEY_A), 403, "client_halted")
    _refused(await _patch(engine, resting, {"price": "101.00"}, ADMIN), 403, "client_halted")
    assert (await _patch(engine, other, {"quantity": "2"}, KEY_B)).status_code == 200
    # Cancels are allowed.
    cancel = await _matched(engine, engine.client.post(f"/orders/{resting}/cancel", headers=KEY_A))
    assert (cancel.status_code, cancel.json()["status"]) == (200, "cancelled")

    assert await _metric(engine, "halted_clients") == 1
    assert await _metric(engine, "halted_instruments") == 0
    assert await _metric(engine, 'risk_rejections_total{reason="client_halted"}') == 5

    # Repeats are harmless (the first halt's time stays, in Redis as in PostgreSQL); then the lift (twice) lets
    # the client trade again.
    first_time = await engine.redis.hget(engine.keys["ETH-USD"].halts, "c:client-A")
    await asyncio.sleep(0.002)
    assert (await engine.client.post(CLIENT_A, headers=ADMIN)).json()["halted"] is True
    assert await engine.redis.hget(engine.keys["ETH-USD"].halts, "c:client-A") == first_time
    assert await _halt_rows(db_url) == {("client", "client-A")}
    with caplog.at_level(logging.INFO, logger="services.ingest.halts"):
        for _ in range(2):
            lifted = await engine.client.delete(CLIENT_A, headers=ADMIN)
            assert (lifted.status_code, lifted.json()) == (200, {"client_id": "client-A", "halted": False})
    assert [r.__dict__["client"] for r in caplog.records if getattr(r, "event", None) == "resume"] == [
        "client-A", "client-A"]
    assert await _halt_rows(db_url) == set()
    assert (await engine.post(limit_order())).status_code == 201
    assert await _metric(engine, "halted_clients") == 0


async def test_cancel_open_cancels_the_resting_orders_with_reason_halted(engine: Engine) -> None:
    btc = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    eth = (await engine.place(KEY_A, instrument="ETH-USD", price="100.00", quantity="1"))["order_id"]
    partial = (await engine.place(KEY_A, side="sell", price="200.00", quantity="2"))["order_id"]
    await engine.place(KEY_B, client_id="client-B", side="buy", price="200.00", quantity="0.5")
    keep = (await engine.place(KEY_B, client_id="client-B", price="90.00", quantity="1"))["order_id"]
    await engine.drain()
    # Accepted and not yet matched when the halt comes: cancelled too (the cancel_all follows it on the stream).
    pending = (await engine.place(KEY_A, price="99.00", quantity="1"))["order_id"]

    response = await _matched(engine, engine.client.post(CLIENT_A, json={"cancel_open": True}, headers=ADMIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["client_id"], body["halted"]) == ("client-A", True)
    assert sorted(body["cancelled"]) == sorted([btc, eth, partial, pending])
    for order_id in (btc, eth, partial, pending):
        view = (await engine.get(order_id, ADMIN)).json()
        assert (view["status"], view["reason"]) == ("cancelled", "halted"), view
    assert (await engine.get(partial, ADMIN)).json()["filled_quantity"] == "0.5"
    assert (await engine.get(keep, ADMIN)).json()["status"] == "open"
    _refused(await engine.post(limit_order()), 403, "client_halted")


async def test_cancel_open_past_the_wait_answers_202_with_the_pending_instruments(
        make_engine: EngineFactory, db_url: str) -> None:
    engine = await make_engine(database_url=db_url, cancel_wait_ms=30)
    response = await engine.client.post(CLIENT_A, json={"cancel_open": True}, headers=ADMIN)
    assert (response.status_code, response.json()) == (202, {
        "client_id": "client-A", "halted": True, "cancelled": [], "pending_instruments": ["BTC-USD", "ETH-USD"]})
    _refused(await engine.post(limit_order()), 403, "client_halted")


async def test_an_instrument_halt_refuses_its_new_orders_and_amends_with_409(engine: Engine, db_url: str) -> None:
    resting = (await engine.place(KEY_A, price="100.00", quantity="1"))["order_id"]
    await engine.drain()
    response = await engine.client.post(BTC, headers=ADMIN)
    assert (response.status_code, response.json()) == (200, {"instrument": "BTC-USD", "halted": True})
    assert await _halt_rows(db_url) == {("instrument", "BTC-USD")}

    _refused(await engine.post(limit_order()), 409, "instrument_halted")
    _refused(await engine.post(limit_order(type="market", price=None), BROKER), 409, "instrument_halted")
    results = await results_of(engine, [limit_order(), limit_order(instrument="ETH-USD", price="100.00",
                                                                   quantity="1")])
    assert [r["status"] for r in results] == [409, 201]
    _refused(await _patch(engine, resting, {"quantity": "2"}, KEY_A), 409, "instrument_halted")
    assert await _metric(engine, "halted_instruments") == 1
    assert await _metric(engine, 'risk_rejections_total{reason="instrument_halted"}') == 4
    cancel = await _matched(engine, engine.client.delete(f"/orders/{resting}", headers=KEY_A))
    assert (cancel.status_code, cancel.json()["status"]) == (200, "cancelled")

    # A client halt on a halted instrument: the client's refusal comes first.
    await engine.client.post(CLIENT_A, headers=ADMIN)
    _refused(await engine.post(limit_order()), 403, "client_halted")
    await engine.client.delete(CLIENT_A, headers=ADMIN)

    assert (await engine.client.post(BTC, headers=ADMIN)).status_code == 200  # a repeat
    for _ in range(2):
        lifted = await engine.client.delete(BTC, headers=ADMIN)
        assert (lifted.status_code, lifted.json()) == (200, {"instrument": "BTC-USD", "halted": False})
    assert await _halt_rows(db_url) == set()
    assert (await engine.post(limit_order())).status_code == 201
    assert await _metric(engine, "halted_instruments") == 0


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_admin_only_and_404s(engine: Engine, method: str) -> None:
    for path in (CLIENT_A, BTC):
        assert (await engine.client.request(method, path)).status_code == 401
        for key in (KEY_A, BROKER):
            _refused(await engine.client.request(method, path, headers=key), 403, "forbidden")
    _refused(await engine.client.request(method, "/admin/instruments/DOGE-USD/halt", headers=ADMIN),
             404, "not_found")
    _refused(await engine.client.request(method, "/admin/clients/a%20b/halt", headers=ADMIN), 404, "not_found")
    assert await engine.redis.exists(*(k.halts for k in engine.keys.values())) == 0


@pytest.mark.parametrize("body, status", [(b"[", 400), (b"[]", 400), (b'{"cancel_open": "yes"}', 422),
                                          (b'{"cancel": true}', 422)])
async def test_a_bad_client_halt_body(engine: Engine, body: bytes, status: int) -> None:
    response = await engine.client.post(CLIENT_A, content=body, headers=ADMIN)
    assert response.status_code == status, response.text
    assert await engine.redis.exists(*(k.halts for k in engine.keys.values())) == 0


def _id(stream_id: bytes | str) -> tuple[int, int]:
    ms, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).split("-")
    return int(ms), int(seq)


async def test_no_order_is_accepted_after_the_halts_answer(engine: Engine) -> None:
    halted = asyncio.Event()
    key = engine.keys["BTC-USD"].orders

    async def flood() -> list[tuple[bool, httpx.Response]]:
        answers = []
        for _ in range(60):
            after = halted.is_set()
            answers.append((after, await engine.post(limit_order(price="100.00", quantity="1"))))
        return answers

    floods = [asyncio.create_task(flood()) for _ in range(6)]
    while await engine.redis.xlen(key) < 20:
        await asyncio.sleep(0.001)
    response = await engine.client.post(CLIENT_A, headers=ADMIN)
    assert response.status_code == 200
    # Every entry written after the halt's answer was sent is after this one.
    (last, _), = await engine.redis.xrevrange(key, count=1)
    halted.set()
    answers = [a for done in await asyncio.gather(*floods) for a in done]

    accepted = {r.json()["order_id"] for _, r in answers if r.status_code == 201}
    assert accepted and all(r.status_code in (201, 403) for _, r in answers)
    assert all(r.status_code == 403 for after, r in answers if after)
    assert any(r.status_code == 403 for _, r in answers)
    entries = await engine.redis.xrange(key)
    on_stream = {fields[b"order_id"].decode(): entry_id for entry_id, fields in entries}
    assert set(on_stream) == accepted
    assert max(_id(i) for i in on_stream.values()) <= _id(last)


async def test_halts_survive_an_ingest_restart(make_engine: EngineFactory, db_url: str) -> None:
    first = await make_engine(database_url=db_url)
    await first.client.post(CLIENT_A, headers=ADMIN)
    await first.client.post(BTC, headers=ADMIN)
    # Another ingest process on the same Redis (a restarted one, or one more of several): the same halts, and
    # the same gauges, counted from Redis.
    second = await make_engine(database_url=db_url, prepare=False)
    _refused(await second.post(limit_order(instrument="ETH-USD", price="100.00", quantity="1")), 403,
             "client_halted")
    _refused(await second.post(limit_order(client_id="client-B"), KEY_B), 409, "instrument_halted")
    assert (await _metric(second, "halted_clients"), await _metric(second, "halted_instruments")) == (1, 1)


async def test_halts_survive_a_redis_rebuilt_from_postgresql(engine: Engine, db_url: str) -> None:
    for path in (CLIENT_A, "/admin/clients/client-C/halt", BTC, CLIENT_A):
        assert (await engine.client.post(path, headers=ADMIN)).status_code == 200
        await asyncio.sleep(0.002)
    assert (await engine.client.delete("/admin/clients/client-C/halt", headers=ADMIN)).status_code == 200
    before = {s: await engine.redis.hgetall(k.halts) for s, k in engine.keys.items()}
    # Redis loses the engine's state; the matcher's rebuild puts the halts back from PostgreSQL.
    for keys in engine.keys.values():
        await engine.redis.delete(keys.halts, keys.meta)
    for symbol, instrument in engine.settings.instruments.items():
        await recover_instrument(engine.redis, instrument, engine.keys[symbol], db_url)
    after = {s: await engine.redis.hgetall(k.halts) for s, k in engine.keys.items()}
    assert after == before
    assert set(after["BTC-USD"]) == {b"c:client-A", b"instrument"} and set(after["ETH-USD"]) == {b"c:client-A"}
    _refused(await engine.post(limit_order(instrument="ETH-USD", price="100.00", quantity="1")), 403,
             "client_halted")
    _refused(await engine.post(limit_order(client_id="client-B"), KEY_B), 409, "instrument_halted")
    assert (await engine.post(limit_order(client_id="client-C", instrument="ETH-USD", price="100.00",
                                          quantity="1"), BROKER)).status_code == 201


async def test_postgresql_down_halts_nothing(make_engine: EngineFactory) -> None:
    engine = await make_engine(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    _refused(await engine.client.post(CLIENT_A, headers=ADMIN), 503, "unavailable")
    _refused(await engine.client.post(BTC, headers=ADMIN), 503, "unavailable")
    assert await engine.redis.exists(*(k.halts for k in engine.keys.values())) == 0
    assert (await engine.post(limit_order())).status_code == 201


async def test_the_openapi_document_describes_the_halts(engine: Engine) -> None:
    document = (await engine.client.get("/openapi.json")).json()
    paths, schemas = document["paths"], document["components"]["schemas"]
    client, instrument = paths["/admin/clients/{client_id}/halt"], paths["/admin/instruments/{symbol}/halt"]
    assert set(client["post"]["responses"]) == {"200", "202", "400", "401", "403", "404", "413", "422", "503"}
    assert set(client["delete"]["responses"]) == {"200", "401", "403", "404", "503"}
    assert client["post"]["requestBody"]["required"] is False
    assert schemas["ClientHaltRequest"]["properties"]["cancel_open"] == {"type": "boolean", "default": False}
    for method in ("post", "delete"):
        assert set(instrument[method]["responses"]) == {"200", "401", "403", "404", "503"}
        (symbol,) = instrument[method]["parameters"]
        assert symbol["schema"]["enum"] == ["BTC-USD", "ETH-USD"]
    assert set(schemas["ClientHalted"]["required"]) == {"client_id", "halted", "cancelled"}
    assert set(schemas["InstrumentHalt"]["required"]) == {"instrument", "halted"}
    assert "client_halted" in paths["/orders"]["post"]["responses"]["403"]["description"]
    assert "instrument_halted" in paths["/orders"]["post"]["responses"]["409"]["description"]
    assert "max_order_notional" in paths["/orders/{order_id}"]["patch"]["responses"]["422"]["description"]
