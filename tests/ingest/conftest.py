"""The ingest app in-process (httpx over ASGI) against real Redis, with the matcher driven by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.common.instruments import Instruments
from services.common.keys import InstrumentKeys, instrument_keys
from services.ingest.app import create_app, serving_app
from services.ingest.context import IngestContext
from services.ingest.settings import IngestSettings
from services.matcher.engine import InstrumentMatcher
from tests.conftest import REPO_ROOT

DEMO_KEYS = REPO_ROOT / "config" / "demo_api_keys.toml"
KEY_A = {"Authorization": "Bearer demo-key-A"}
KEY_B = {"Authorization": "Bearer demo-key-B"}
BROKER = {"Authorization": "Bearer demo-broker"}
ADMIN = {"Authorization": "Bearer demo-admin"}


def limit_order(**fields: Any) -> dict[str, Any]:
    """A valid BTC-USD limit buy of client-A, with `fields` changed."""
    body: dict[str, Any] = {
        "client_id": "client-A", "instrument": "BTC-USD", "side": "buy", "type": "limit",
        "price": "50000.00", "quantity": "0.5",
    }
    body.update(fields)
    return body


class Engine:
    """One ingest app with its own key prefix, an HTTP client for it, and a matcher per instrument."""

    def __init__(self, app: Any, client: httpx.AsyncClient, redis: Redis, settings: IngestSettings) -> None:
        self.app = app
        self.client = client
        self.redis = redis
        self.settings = settings
        self.ctx: IngestContext = app.state.ctx
        self.keys: dict[str, InstrumentKeys] = {
            s: instrument_keys(settings.key_prefix, s) for s in settings.instruments
        }
        self.matchers = {
            s: InstrumentMatcher(redis, inst, self.keys[s], "test", 100)
            for s, inst in settings.instruments.items()
        }

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post("/orders", json=body, headers=KEY_A if headers is None else headers)

    async def place(self, headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        """POST a limit order (see limit_order) that must be accepted; its 201 body."""
        response = await self.post(limit_order(**fields), headers=headers or BROKER)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def get(self, order_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(f"/orders/{order_id}", headers=KEY_A if headers is None else headers)

    async def drain(self) -> int:
        """Let every instrument's matcher apply all waiting commands."""
        return sum([await m.drain() for m in self.matchers.values()])


EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
def ingest_settings(redis_url: str, key_prefix: str, instruments: Instruments, database_url: str
                    ) -> IngestSettings:
    # The session's own migrated database (never the default `trading` one a live engine may use): reads of
    # orders Redis does not hold fall back to it.
    return IngestSettings(
        redis_url=redis_url, key_prefix=key_prefix, instruments=instruments, api_keys_file=DEMO_KEYS,
        lag_poll_interval_s=0.02, cancel_wait_ms=1000, database_url=database_url,
    )


@pytest.fixture
async def make_engine(redis: Redis, ingest_settings: IngestSettings) -> AsyncIterator[EngineFactory]:
    """Start an engine with the test's settings, changed by keyword arguments; stopped after the test."""
    async with AsyncExitStack() as stack:

        async def make(prepare: bool = True, **changes: Any) -> Engine:
            settings = dataclasses.replace(ingest_settings, **changes)
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=serving_app(app)), base_url="http://ingest"))
            engine = Engine(app, client, redis, settings)
            if prepare:
                for matcher in engine.matchers.values():
                    await matcher.prepare()
                    await matcher.take_lease()
            return engine

        yield make


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    return await make_engine()
