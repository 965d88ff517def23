"""The ingest app served by a real uvicorn in the test's event loop, for the order-entry socket: a WebSocket
client speaking its frames, beside the HTTP client of the same app."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from services.common.runner import Server
from services.ingest.app import create_app, serving_app, uvicorn_config
from services.ingest.settings import IngestSettings
from tests.ingest.conftest import Engine

Frame = dict[str, Any]


class TradeClient:
    """One order-entry socket: send requests, read frames; replies are kept by id as they arrive."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.replies: dict[str, Frame] = {}
        self.others: list[Frame] = []  # frames other than replies, in order
        self.order: list[str] = []  # reply ids in arrival order
        self._ids = itertools.count(1)

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def request(self, op: str, **fields: Any) -> str:
        """Send one request; its id."""
        request_id = f"r{next(self._ids)}"
        await self.send({"id": request_id, "op": op, **fields})
        return request_id

    async def _read(self, within: float) -> None:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), within))
        if frame.get("type") == "reply":
            self.replies[frame["id"]] = frame
            self.order.append(frame["id"])
        else:
            self.others.append(frame)

    async def reply(self, request_id: str, within: float = 5.0) -> Frame:
        """The reply to `request_id`, waiting for it."""
        async with asyncio.timeout(within):
            while request_id not in self.replies:
                await self._read(within)
        return self.replies.pop(request_id)

    async def call(self, op: str, within: float = 5.0, **fields: Any) -> Frame:
        """Send one request and wait for its reply."""
        return await self.reply(await self.request(op, **fields), within)

    async def other(self, within: float = 5.0) -> Frame:
        """The next frame that is not a reply."""
        async with asyncio.timeout(within):
            while not self.others:
                await self._read(within)
        return self.others.pop(0)

    async def auth(self, api_key: str, cancel_on_disconnect: bool = False) -> Frame:
        await self.send({"op": "auth", "api_key": api_key, "cancel_on_disconnect": cancel_on_disconnect})
        return await self.other()


class TradeServer:
    """The test's ingest on a real port: its HTTP client (the same app) and a factory of sockets."""

    def __init__(self, engine: Engine, server: Server, port: int, stack: contextlib.AsyncExitStack) -> None:
        self.engine = engine
        self.server = server
        self.url = f"ws://127.0.0.1:{port}/trade"
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
        self._stack = stack

    async def open(self, query: str = "", **kwargs: Any) -> TradeClient:
        ws = await self._stack.enter_async_context(connect(self.url + query, max_size=None, **kwargs))
        return TradeClient(ws)


TradeServerFactory = Callable[..., Awaitable[TradeServer]]


# Named fixtures: test modules import these functions (`from ... import trade_fixture`) without the name
# shadowing the test's argument.
@pytest.fixture(name="make_trade_server")
async def make_trade_server_fixture(redis: Redis, ingest_settings: IngestSettings) -> AsyncIterator[TradeServerFactory]:
    """Start ingest servers with the test's settings (changed by keyword arguments); stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**changes: Any) -> TradeServer:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            settings = dataclasses.replace(ingest_settings, port=port, **changes)
            app = create_app(settings)
            server = Server(uvicorn_config(serving_app(app), settings))
            await server.start([sock])
            stack.push_async_callback(lambda: asyncio.wait_for(server.stop(), 15))
            client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
            stack.push_async_callback(client.aclose)
            engine = Engine(app, client, redis, settings)
            for matcher in engine.matchers.values():
                await matcher.prepare()
                await matcher.take_lease()
            running = TradeServer(engine, server, port, stack)
            stack.push_async_callback(running.http.aclose)
            return running

        yield make


@pytest.fixture(name="trade")
async def trade_fixture(make_trade_server: TradeServerFactory) -> TradeServer:
    return await make_trade_server()
