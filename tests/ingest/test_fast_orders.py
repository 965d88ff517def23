"""OrdersFastPath: POST /orders answered straight from ASGI, every other request passed on to the app."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from services.ingest import fast_orders
from services.ingest.fast_orders import OrdersFastPath
from tests.ingest.conftest import KEY_A, Engine, limit_order


class Recording:
    """An ASGI layer between the fast path and the Starlette app, as a middleware of the app would sit."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


async def test_post_orders_never_reaches_the_app_and_everything_else_does(engine: Engine) -> None:
    inner = Recording(engine.app)
    async with client_of(OrdersFastPath(inner, engine.ctx)) as client:
        placed = await client.post("/orders", json=limit_order(), headers=KEY_A)
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["order_id"]
        assert inner.seen == []  # a Starlette middleware would not see POST /orders
        assert (await client.get(f"/orders/{order_id}", headers=KEY_A)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
    assert inner.seen == [("GET", f"/orders/{order_id}"), ("GET", "/healthz")]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_on_orders_are_405_allowing_post(engine: Engine, method: str) -> None:
    response = await engine.client.request(method, "/orders")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {"error": "method_not_allowed", "message": "Method Not Allowed", "details": []}


async def test_an_unexpected_error_is_a_json_500(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fast_orders, "answer_order", broken)
    response = await engine.post(limit_order())
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "unexpected error", "details": []}


async def test_a_client_gone_before_its_body_arrived_gets_nothing_and_places_nothing(engine: Engine) -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/orders", "headers": [], "query_string": b""}
    await OrdersFastPath(engine.app, engine.ctx)(scope, receive, send)
    assert sent == []
    assert await engine.redis.xlen(engine.keys["BTC-USD"].orders) == 0
