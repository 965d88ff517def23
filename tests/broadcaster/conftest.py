"""The broadcaster as a real uvicorn server in the test's event loop, real Redis, real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from services.broadcaster.app import create_app, listen_socket, uvicorn_config
from services.broadcaster.context import BroadcasterContext
from services.broadcaster.settings import BroadcasterSettings
from services.common.instruments import Instruments
from services.common.runner import Server
from tests.conftest import REPO_ROOT
from tests.matcher.harness import Harness

DEMO_KEYS = REPO_ROOT / "config" / "demo_api_keys.toml"
Message = dict[str, Any]


class Broadcaster:
    """A running broadcaster: its URL and its shared state (hub, reader, metrics)."""

    def __init__(self, server: Server, ctx: BroadcasterContext, settings: BroadcasterSettings) -> None:
        self.server = server
        self.ctx = ctx
        self.settings = settings
        self.url = f"ws://{settings.host}:{settings.port}/stream"

    async def stop(self) -> None:
        await asyncio.wait_for(self.server.stop(), 15)


class Stream:
    """A WebSocket client that flattens batched frames into single messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer: list[Message] = []
        self.frames = 0

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def next(self, within: float = 5.0) -> Message:
        while not self.buffer:
            data = json.loads(await asyncio.wait_for(self.ws.recv(), within))
            self.frames += 1
            self.buffer.extend(data if isinstance(data, list) else [data])
        return self.buffer.pop(0)

    async def expect(self, kind: str, within: float = 5.0) -> Message:
        message = await self.next(within)
        assert message["type"] == kind, message
        return message

    async def collect(self, stop: Callable[[Message], bool], within: float = 20.0) -> list[Message]:
        """Messages up to and including the first for which stop() is true."""
        out: list[Message] = []
        async with asyncio.timeout(within):
            while True:
                out.append(await self.next(within))
                if stop(out[-1]):
                    return out

    async def quiet(self, seconds: float = 0.3) -> list[Message]:
        """Whatever arrives within `seconds`."""
        out: list[Message] = []
        with contextlib.suppress(TimeoutError):
            while True:
                out.append(await self.next(seconds))
        return out

    async def subscribe(self, channels: list[str], instruments: list[str] | None = None,
                        since_seq: int | None = None) -> Message:
        request: Message = {"op": "subscribe", "channels": channels}
        if instruments is not None:
            request["instruments"] = instruments
        if since_seq is not None:
            request["since_seq"] = since_seq
        await self.send(request)
        return await self.expect("subscribed")

    async def auth(self, api_key: str) -> Message:
        await self.send({"op": "auth", "api_key": api_key})
        return await self.next()


async def eventually(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll until condition() holds (server state with no event to wait on); fail after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


BroadcasterFactory = Callable[..., Awaitable[Broadcaster]]
StreamFactory = Callable[..., Awaitable[Stream]]


@pytest.fixture
def broadcaster_settings(redis_url: str, key_prefix: str, instruments: Instruments) -> BroadcasterSettings:
    return BroadcasterSettings(redis_url=redis_url, key_prefix=key_prefix, instruments=instruments,
                               api_keys_file=DEMO_KEYS, port=0, read_block_ms=200, close_timeout_s=5.0,
                               shutdown_timeout_s=2)


@pytest.fixture
async def make_broadcaster(broadcaster_settings: BroadcasterSettings) -> AsyncIterator[BroadcasterFactory]:
    """Start broadcasters with the test's settings, changed by keyword arguments; stopped after the test."""
    running: list[Broadcaster] = []

    async def make(**changes: Any) -> Broadcaster:
        settings = dataclasses.replace(broadcaster_settings, **changes)
        sock = listen_socket(settings)
        settings = dataclasses.replace(settings, port=sock.getsockname()[1])
        app = create_app(settings)
        server = Server(uvicorn_config(app, settings))
        await server.start([sock])
        running.append(Broadcaster(server, app.state.ctx, settings))
        return running[-1]

    yield make
    for broadcaster in running:
        await broadcaster.stop()


@pytest.fixture
async def broadcaster(make_broadcaster: BroadcasterFactory) -> Broadcaster:
    return await make_broadcaster()


@pytest.fixture
async def open_stream(broadcaster: Broadcaster) -> AsyncIterator[StreamFactory]:
    """Open WebSocket clients to the test's broadcaster (or another one); closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_(target: Broadcaster | None = None, **kwargs: Any) -> Stream:
            ws = await stack.enter_async_context(connect((target or broadcaster).url, **kwargs))
            return Stream(ws)

        yield open_


@pytest.fixture
async def btc(redis: Redis, instruments: Instruments, key_prefix: str) -> Harness:
    """The BTC-USD matcher, driven in-process, writing the streams the broadcaster reads."""
    harness = Harness(redis, instruments["BTC-USD"], key_prefix)
    await harness.prepare()
    return harness
