"""The order-entry socket ws://…/trade against real Redis: authentication, each request's reply equal to its
HTTP endpoint's status and body (validation, roles, idempotency across the two), error frames, 1009, replies
out of order and the bound on requests in flight."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.apikeys.cli import create_key, revoke_key
from tests.ingest.conftest import KEY_A, limit_order
from tests.ingest.test_place_batch import MIXED, eth, stable, without_ids
from tests.ingest.trade_client import (  # noqa: F401 (fixtures)
    TradeServer,
    TradeServerFactory,
    make_trade_server_fixture,
    trade_fixture,
)

UNAUTHORIZED = {"error": "unauthorized", "message": "a valid API key is needed: Authorization: Bearer <key>",
                "details": []}


async def test_auth_message_then_place_answers_as_post_orders(trade: TradeServer) -> None:
    ws = await trade.open()
    assert await ws.auth("demo-key-A") == {"type": "authenticated", "role": "trader", "client_id": "client-A",
                                           "cancel_on_disconnect": False}
    reply = await ws.call("place", order=limit_order(client_order_id="ws-1"))
    assert set(reply) == {"type", "id", "status", "body"} and reply["status"] == 201
    body = reply["body"]
    assert body["status"] == "accepted" and body["client_order_id"] == "ws-1"
    # The order exists as POST /orders would have left it.
    got = await trade.http.get(f"/orders/{body['order_id']}", headers=KEY_A)
    assert got.status_code == 200 and got.json() == body


async def test_bearer_on_the_handshake(trade: TradeServer) -> None:
    ws = await trade.open(additional_headers={"Authorization": "Bearer demo-broker"})
    assert await ws.other() == {"type": "authenticated", "role": "broker", "client_id": None,
                                "cancel_on_disconnect": False}
    assert (await ws.call("place", order=limit_order(client_id="client-B")))["status"] == 201
    await ws.send({"op": "auth", "api_key": "demo-key-A"})
    assert await ws.other() == {"type": "error", "message": "already authenticated"}


async def test_bad_bearer_on_the_handshake_is_refused_401(trade: TradeServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await trade.open(additional_headers={"Authorization": "Bearer nope"})
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"") == UNAUTHORIZED


async def test_before_auth_and_bad_frames(trade: TradeServer) -> None:
    ws = await trade.open()
    assert await ws.call("place", order=limit_order()) == {
        "type": "reply", "id": "r1", "status": 401, "body": UNAUTHORIZED}
    await ws.send("not json")
    assert await ws.other() == {"type": "error", "message": "a frame must be a JSON object"}
    await ws.send("[1, 2]")
    assert await ws.other() == {"type": "error", "message": "a frame must be a JSON object"}
    for no_id in ({"op": "place"}, {"id": "", "op": "place"}, {"id": 5, "op": "place"}, {"id": "x" * 65}):
        await ws.send(no_id)
        assert await ws.other() == {"type": "error",
                                    "message": 'a request needs an "id": a string of 1 to 64 characters'}
    await ws.send({"op": "auth", "api_key": "nope"})
    assert await ws.other() == {"type": "error", "message": "auth: unknown API key"}
    await ws.send({"op": "auth", "api_key": "demo-key-A", "surprise": 1})
    assert (await ws.other())["type"] == "error"
    assert (await ws.auth("demo-key-A"))["type"] == "authenticated"
    reply = await ws.call("dance")
    assert reply["status"] == 422 and reply["body"]["details"][0]["field"] == "op"
    reply = await ws.call("place")
    assert reply["status"] == 422 and reply["body"]["details"][0]["field"] == "order"
    reply = await ws.call("place", order=limit_order(), extra=1)
    assert reply["status"] == 422 and reply["body"]["details"] == [{"field": "extra", "message": "unknown field"}]
    reply = await ws.call("cancel")
    assert reply["status"] == 422 and reply["body"]["details"][0]["field"] == "order_id"


@pytest.mark.parametrize("order", MIXED, ids=range(len(MIXED)))
async def test_place_answers_exactly_what_post_orders_answers(trade: TradeServer, order: Any) -> None:
    """Each of the batch tests' mixed orders, sent once over HTTP and once over the socket by the same key
    (fresh client_order_id and idempotency keys): the same status and the same body."""
    ws = await trade.open()
    await ws.auth("demo-key-A")
    if isinstance(order, dict):
        order = {**order}
        for field in ("client_order_id", "idempotency_key"):
            if field in order:
                order[field] = f"{order[field]}-{id(order)}"
    http = await trade.http.post("/orders", content=json.dumps(order), headers=KEY_A)
    if isinstance(order, dict):
        order = {**order, **{f: order[f] + "-ws" for f in ("client_order_id", "idempotency_key") if f in order}}
    reply = await ws.call("place", order=order)
    assert reply["status"] == http.status_code
    if http.status_code == 201:
        assert stable(reply["body"]) == {**stable(http.json()),
                                         "client_order_id": reply["body"]["client_order_id"]}
    else:
        assert without_ids(reply["body"]) == without_ids(http.json())


async def test_idempotency_and_duplicates_span_http_and_the_socket(trade: TradeServer) -> None:
    ws = await trade.open()
    await ws.auth("demo-key-A")
    first = await ws.call("place", order=limit_order(idempotency_key="both-1"))
    assert first["status"] == 201
    replay = await trade.http.post("/orders", json=limit_order(idempotency_key="both-1"), headers=KEY_A)
    assert replay.status_code == 200 and replay.json() == first["body"]
    again = await ws.call("place", order=limit_order(idempotency_key="both-1"))
    assert again["status"] == 200 and again["body"] == first["body"]
    conflict = await ws.call("place", order=limit_order(idempotency_key="both-1", quantity="0.7"))
    http_conflict = await trade.http.post("/orders", json=limit_order(idempotency_key="both-1", quantity="0.7"),
                                          headers=KEY_A)
    assert conflict["status"] == 409 and conflict["body"] == http_conflict.json()
    placed = await trade.http.post("/orders", json=limit_order(client_order_id="c-1"), headers=KEY_A)
    duplicate = await ws.call("place", order=limit_order(client_order_id="c-1"))
    assert duplicate["status"] == 409 and duplicate["body"]["error"] == "duplicate_client_order_id"
    assert placed.json()["order_id"] in duplicate["body"]["message"]


async def test_rate_limit_counts_socket_orders_in_the_same_bucket(make_trade_server: TradeServerFactory) -> None:
    trade = await make_trade_server(rate_limit_per_sec=1, rate_limit_burst=2)
    ws = await trade.open()
    await ws.auth("demo-key-A")
    assert (await ws.call("place", order=limit_order()))["status"] == 201
    assert (await trade.http.post("/orders", json=limit_order(), headers=KEY_A)).status_code == 201
    refused = await ws.call("place", order=limit_order())
    assert refused["status"] == 429 and refused["body"]["error"] == "rate_limited"
    batch = await ws.call("place_batch", orders=[limit_order()])
    assert batch["status"] == 200 and batch["body"]["results"][0]["status"] == 429
    assert batch["body"]["results"][0]["error"]["retry_after_s"] >= 1


async def test_place_batch_answers_exactly_what_the_batch_endpoint_answers(trade: TradeServer) -> None:
    orders = [limit_order(), limit_order(price="1.001"), 7, limit_order(client_id="client-B"),
              limit_order(idempotency_key="b-1"), limit_order(idempotency_key="b-1")]
    http = await trade.http.post("/orders/batch", json={"orders": orders}, headers=KEY_A)
    ws = await trade.open()
    await ws.auth("demo-key-A")
    reply = await ws.call("place_batch", orders=[*orders[:4], limit_order(idempotency_key="b-2"),
                                                 limit_order(idempotency_key="b-2")])
    assert reply["status"] == http.status_code == 200
    got, want = reply["body"]["results"], http.json()["results"]
    assert [r["status"] for r in got] == [r["status"] for r in want] == [201, 422, 400, 403, 201, 200]
    assert [r.get("error") for r in got] == [r.get("error") for r in want]
    assert [stable(r["order"]) for r in got if "order" in r] == [stable(r["order"]) for r in want if "order" in r]
    # Request-level answers as the endpoint's.
    for fields in ({}, {"orders": []}, {"orders": "x"}):
        reply = await ws.call("place_batch", **fields)
        http = await trade.http.post("/orders/batch", json=fields, headers=KEY_A)
        assert (reply["status"], reply["body"]) == (http.status_code, http.json())


async def test_cancel_answers_as_the_cancel_endpoint_and_replies_come_out_of_order(trade: TradeServer) -> None:
    engine = trade.engine
    resting = await engine.place(price="100.00")
    await engine.drain()
    ws = await trade.open()
    await ws.auth("demo-key-A")
    cancel_id = await ws.request("cancel", order_id=resting["order_id"])
    place_id = await ws.request("place", order=limit_order(price="101.00"))
    # The place is answered while the cancel still waits for the matcher.
    placed = await ws.reply(place_id)
    assert placed["status"] == 201 and cancel_id not in ws.replies
    await engine.drain()
    cancelled = await ws.reply(cancel_id)
    assert ws.order == [place_id, cancel_id]
    assert cancelled["status"] == 200
    assert cancelled["body"] == (await engine.get(resting["order_id"])).json()
    assert cancelled["body"]["status"] == "cancelled" and cancelled["body"]["reason"] == "user"
    # A final order: 409 with its state; unknown: 404; another client's: 403; a bad id: 404, as over HTTP.
    again = await ws.call("cancel", order_id=resting["order_id"])
    http = await trade.http.post(f"/orders/{resting['order_id']}/cancel", headers=KEY_A)
    assert (again["status"], again["body"]) == (http.status_code, http.json()) == (409, cancelled["body"])
    b_order = await engine.place(client_id="client-B")
    for order_id, status in ((b_order["order_id"], 403), ("0" * 32, 404), ("no such/id", 404)):
        reply = await ws.call("cancel", order_id=order_id)
        assert reply["status"] == status
    forbidden = await trade.http.post(f"/orders/{b_order['order_id']}/cancel", headers=KEY_A)
    assert (await ws.call("cancel", order_id=b_order["order_id"]))["body"] == forbidden.json()


async def test_cancel_past_the_wait_is_202(make_trade_server: TradeServerFactory) -> None:
    trade = await make_trade_server(cancel_wait_ms=100)
    placed = await trade.engine.place()
    ws = await trade.open()
    await ws.auth("demo-broker")
    reply = await ws.call("cancel", order_id=placed["order_id"])
    assert reply["status"] == 202 and reply["body"] == {"order_id": placed["order_id"], "status": "cancel_requested"}


async def test_requests_in_flight_are_bounded_per_socket(make_trade_server: TradeServerFactory) -> None:
    """With one request in flight at most, a place sent after two waiting cancels is answered after them; with
    room, before them."""
    for in_flight, place_first in ((1, False), (8, True)):
        trade = await make_trade_server(cancel_wait_ms=300, trade_max_in_flight=in_flight)
        first, second = await trade.engine.place(), await trade.engine.place()
        ws = await trade.open()
        await ws.auth("demo-broker")
        ids = [await ws.request("cancel", order_id=first["order_id"]),
               await ws.request("cancel", order_id=second["order_id"]),
               await ws.request("place", order=limit_order())]
        for request_id in ids:
            await ws.reply(request_id)
        assert (ws.order[0] == ids[2]) is place_first, ws.order


async def test_a_frame_over_1_mib_closes_the_socket_with_1009(trade: TradeServer) -> None:
    ws = await trade.open()
    await ws.auth("demo-key-A")
    await ws.send({"id": "big", "op": "place", "order": "x" * (1 << 20)})
    with pytest.raises(ConnectionClosed) as closed:
        await ws.reply("big")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_frame_just_under_1_mib_is_answered(trade: TradeServer) -> None:
    ws = await trade.open()
    await ws.auth("demo-key-A")
    frame = {"id": "big", "op": "place", "order": limit_order()}
    text = json.dumps(frame)
    frame["pad"] = "x" * ((1 << 20) - len(text) - len(', "pad": ""'))
    assert len(json.dumps(frame)) == 1 << 20
    reply = await ws.call("place", **{k: v for k, v in frame.items() if k not in ("id", "op")})
    assert reply["status"] == 422 and reply["body"]["details"] == [{"field": "pad", "message": "unknown field"}]


async def test_auth_mode_off_needs_no_auth(make_trade_server: TradeServerFactory) -> None:
    trade = await make_trade_server(auth_mode="off")
    ws = await trade.open()
    assert await ws.other() == {"type": "authenticated", "role": "admin", "client_id": None,
                                "cancel_on_disconnect": False}
    assert (await ws.call("place", order=limit_order(client_id="anyone")))["status"] == 201


async def test_many_sockets_many_requests(trade: TradeServer) -> None:
    """Concurrent sockets, each with many requests in flight: every request answered once, by id."""
    async def one(n: int) -> None:
        ws = await trade.open()
        await ws.auth("demo-broker")
        ids = [await ws.request("place", order=limit_order(client_order_id=f"s{n}-{i}")) for i in range(50)]
        replies = [await ws.reply(i) for i in ids]
        assert [r["status"] for r in replies] == [201] * 50
        assert [r["body"]["client_order_id"] for r in replies] == [f"s{n}-{i}" for i in range(50)]

    await asyncio.gather(*[one(n) for n in range(4)])


async def test_a_revoked_keys_sockets_are_closed_1008(make_trade_server: TradeServerFactory, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    key_id, key = create_key(keys_file, "trader", "client-A")
    _, other = create_key(keys_file, "trader", "client-B")
    trade = await make_trade_server(api_keys_file=keys_file)
    revoked, kept = await trade.open(), await trade.open()
    assert (await revoked.auth(key))["type"] == "authenticated"
    assert (await kept.auth(other))["type"] == "authenticated"
    revoke_key(keys_file, key_id)
    with pytest.raises(ConnectionClosed) as closed:
        await revoked.other(within=6.0)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert (await kept.call("place", order=limit_order(client_id="client-B")))["status"] == 201


async def test_amend_and_cancel_all_refusals_answer_as_their_endpoints(trade: TradeServer) -> None:
    """Bad values, nothing to change, unknown and foreign orders, a bad id, another client's cancel-all: the
    same status and body as PATCH /orders/{id} and POST /orders/cancel-all."""
    engine = trade.engine
    ws = await trade.open()
    await ws.auth("demo-key-A")
    mine, other = await engine.place(), await engine.place(client_id="client-B")
    for fields in ({"quantity": "-1"}, {}, {"price": "1.001"}, {"quantity": "1", "colour": "red"}, {"price": []}):
        for order_id in (mine["order_id"], "0" * 32, other["order_id"], "no+such"):
            reply = await ws.call("amend", order_id=order_id, **fields)
            http = await trade.http.patch(f"/orders/{order_id}", json=fields, headers=KEY_A)
            assert (reply["status"], reply["body"]) == (http.status_code, http.json()), (fields, order_id)
            assert reply["status"] in (403, 404, 422)
    reply = await ws.call("amend", quantity="1")
    assert reply["status"] == 422 and reply["body"]["details"][0]["field"] == "order_id"
    for fields in ({"client_id": "client-B"}, {"client_id": "client-A", "side": "up"}, {}, {"client_id": 5},
                   {"client_id": "client-A", "instrument": "NOPE-USD"}):
        reply = await ws.call("cancel_all", **fields)
        http = await trade.http.post("/orders/cancel-all", json=fields, headers=KEY_A)
        assert (reply["status"], reply["body"]) == (http.status_code, http.json()), fields
        assert reply["status"] in (403, 422)


async def test_amend_and_cancel_all_applied_by_the_matcher(make_trade_server: TradeServerFactory) -> None:
    trade = await make_trade_server(cancel_wait_ms=2000)
    engine = trade.engine
    ws = await trade.open()
    await ws.auth("demo-key-A")
    first = (await ws.call("place", order=limit_order(price="100.00", quantity="2")))["body"]
    await engine.drain()
    amend_id = await ws.request("amend", order_id=first["order_id"], quantity="1.5")
    await asyncio.sleep(0.05)
    await engine.drain()
    amended = await ws.reply(amend_id)
    assert amended["status"] == 200, amended
    assert amended["body"] == (await engine.get(first["order_id"])).json()
    assert amended["body"]["quantity"] == "1.5" and amended["body"]["status"] == "open"
    second = (await ws.call("place", order=eth()))["body"]
    await engine.drain()
    cancel_id = await ws.request("cancel_all", client_id="client-A")
    await asyncio.sleep(0.05)
    await engine.drain()
    done = await ws.reply(cancel_id)
    assert done["status"] == 200
    assert sorted(done["body"]["cancelled"]) == sorted([first["order_id"], second["order_id"]])
    assert (await engine.get(second["order_id"])).json()["reason"] == "user"


async def test_metrics_count_sockets_sessions_and_requests(trade: TradeServer) -> None:
    def sample(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    ws = await trade.open()
    assert (await ws.call("place", order=limit_order()))["status"] == 401
    await ws.auth("demo-key-A", cancel_on_disconnect=True)
    await ws.call("place", order=limit_order())
    await ws.call("place", order=limit_order(price="1.001"))
    await ws.call("dance")
    metrics = (await trade.http.get("/metrics")).text
    assert sample(metrics, "trade_sockets ") == 1 and sample(metrics, "cod_sessions ") == 1
    for labels in ('op="place",status="401"', 'op="place",status="201"', 'op="place",status="422"',
                   'op="unknown",status="422"'):
        assert sample(metrics, f"trade_requests_total{{{labels}}}") == 1, labels
    await ws.ws.close()
    for _ in range(100):
        metrics = (await trade.http.get("/metrics")).text
        if sample(metrics, "trade_sockets ") == 0 and sample(metrics, "cod_sessions ") == 0:
            break
        await asyncio.sleep(0.02)
    assert sample(metrics, "trade_sockets ") == 0 and sample(metrics, "cod_sessions ") == 0


def junk_frames(seed: int, count: int) -> list[Any]:
    """Requests with random ops and fields: odd types, deep nesting, huge numbers, odd characters."""
    rng = random.Random(seed)
    values: list[Any] = [None, True, 0, -1, 10**30, 1e308, "", "x" * 300, "\u0000\ud7ff", [], {}, [[[[[]]]]],
                         {"a": {"b": {"c": [1, "2"]}}}, "0" * 32, "01a2-bad", 3.5, "NaN", "1e-8",
                         limit_order(), [limit_order(), 5], limit_order(price=[1]), limit_order(quantity="1e400")]
    names = ["order", "orders", "order_id", "quantity", "price", "client_id", "instrument", "side", "api_key",
             "cancel_on_disconnect", "op", "extra"]
    frames: list[Any] = []
    for n in range(count):
        frame: dict[str, Any] = {"id": f"j{n}", "op": rng.choice([*OPS_NAMES, "auth", "nope", 7, None])}
        for name in rng.sample(names, rng.randint(0, 4)):
            frame[name] = rng.choice(values)
        frame["id"] = f"j{n}"
        frames.append(frame)
    return frames


OPS_NAMES = ["place", "place_batch", "cancel", "amend", "cancel_all"]


async def test_junk_requests_get_one_answer_each_and_never_a_5xx(trade: TradeServer) -> None:
    ws = await trade.open(additional_headers={"Authorization": "Bearer demo-key-A"})
    await ws.other()
    frames = junk_frames(seed=15, count=300)
    for frame in frames:
        await ws.send(frame)
    replies = 0
    errors = 0
    auths = sum(1 for f in frames if f["op"] == "auth")
    async with asyncio.timeout(30):
        while replies + errors < len(frames):
            frame = json.loads(await ws.ws.recv())
            if frame["type"] == "reply":
                assert frame["status"] < 500, frame
                assert set(frame) == {"type", "id", "status", "body"} and frame["id"].startswith("j")
                replies += 1
            else:
                assert frame["type"] == "error" and set(frame) == {"type", "message"}, frame
                errors += 1
    assert errors == auths  # already authenticated on the handshake: each auth is an error, everything else a reply
    # The socket still serves, binary frames as text ones.
    assert (await ws.call("place", order=limit_order()))["status"] == 201
    await ws.ws.send(json.dumps({"id": "bin", "op": "place", "order": limit_order()}).encode())
    assert (await ws.reply("bin"))["status"] == 201
    await ws.ws.send(b"\xff\xfe not utf-8")
    assert await ws.other() == {"type": "error", "message": "a frame must be a JSON object"}


async def test_redis_unreachable_503_as_http_and_no_cancel_on_disconnect_unarmed(
        make_trade_server: TradeServerFactory) -> None:
    trade = await make_trade_server(redis_url="redis://127.0.0.1:1/0")
    ws = await trade.open()
    await ws.send({"op": "auth", "api_key": "demo-key-A", "cancel_on_disconnect": True})
    refused = await ws.other()
    assert refused["type"] == "error" and "cancel_on_disconnect cannot be armed" in refused["message"]
    assert (await ws.call("place", order=limit_order()))["status"] == 401  # still not authenticated
    assert (await ws.auth("demo-key-A"))["cancel_on_disconnect"] is False
    reply = await ws.call("place", order=limit_order())
    http = await trade.http.post("/orders", json=limit_order(), headers=KEY_A)
    assert (reply["status"], reply["body"]) == (http.status_code, http.json())
    assert reply["status"] == 503 and reply["body"]["error"] == "unavailable"
    batch = await ws.call("place_batch", orders=[limit_order()])
    assert batch["status"] == 200 and batch["body"]["results"][0]["status"] == 503
    assert (await ws.call("cancel", order_id="0" * 32))["status"] == 503
    # On the handshake, a session that cannot be armed closes the socket: try again later (1013).
    cod = await trade.open("?cancel_on_disconnect=true", additional_headers={"Authorization": "Bearer demo-key-A"})
    assert (await cod.other())["type"] == "error"
    with pytest.raises(ConnectionClosed) as closed:
        await cod.other()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
