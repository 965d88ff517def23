"""READ_TIMEOUT_MS: public PostgreSQL reads (trades, analytics, positions) give up with 503 read_timeout on
a pool of their own, while order reads keep answering from theirs."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import orders
from services.common.env import SettingsError
from services.ingest.errors import ApiError
from services.ingest.pg_reads import PublicReads
from services.ingest.settings import IngestSettings
from tests.ingest.conftest import KEY_A, Engine, EngineFactory

TIMEOUT_MS = 300
# Well under "a few seconds", well over the 300 ms deadline plus scheduling.
PROMPT_S = 1.5

# Every public read; and the tables each reads, each locked in turn.
PUBLIC_READS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("/trades", {}, {}),
    ("/trades", {"instrument": "BTC-USD"}, {}),
    ("/analytics/BTC-USD/ticker", {}, {}),
    ("/analytics/BTC-USD/candles", {"interval": "1h"}, {}),
    ("/clients/client-A/positions", {}, KEY_A),
]
TABLES = ("trades", "candles_1m", "candles_1h", "client_positions_1h")
_TABLES_OF = {
    "/trades": {"trades"},
    "/analytics/BTC-USD/ticker": {"trades", "candles_1m"},
    "/analytics/BTC-USD/candles": {"candles_1h"},  # interval 1h
    "/clients/client-A/positions": {"trades", "client_positions_1h"},
}


@asynccontextmanager
async def locked(db: AsyncEngine, *tables: str) -> AsyncIterator[None]:
    """Hold ACCESS EXCLUSIVE locks on `tables` from another connection until the block ends."""
    async with db.connect() as conn:
        await conn.execute(text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
        yield
        await conn.rollback()


async def _timed(client: httpx.AsyncClient, path: str, params: dict[str, str], headers: dict[str, str]
                 ) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    # A hung read fails here, in seconds, rather than at the suite's per-test timeout.
    async with asyncio.timeout(10):
        answer = await client.get(path, params=params, headers=headers)
    return answer, time.monotonic() - started


def _assert_read_timeout(answer: httpx.Response, took: float, path: str) -> None:
    assert answer.status_code == 503, (path, answer.text)
    assert answer.json()["error"] == "read_timeout", (path, answer.text)
    assert answer.headers["retry-after"] == "1"
    assert took < PROMPT_S, (path, took)


async def _stored_order(db: AsyncEngine) -> str:
    """An order known to PostgreSQL only (as after a Redis rebuild): GET /orders/{id} reads it from there."""
    now = dt.datetime.now(dt.UTC)
    async with db.begin() as conn:
        await conn.execute(insert(orders).values(
            order_id="pg-only-order", client_order_id=None, client_id="client-A", instrument="BTC-USD",
            side="buy", type="limit", time_in_force="GTC", post_only=False, price=Decimal("100.00"),
            quantity=Decimal("1"), filled_quantity=Decimal("0"), remaining_quantity=Decimal("1"),
            filled_quote=Decimal("0"), average_price=None, status="cancelled", reason="user",
            created_at=now, updated_at=now, last_event_seq=1))
    return "pg-only-order"


async def _waiting_lock_requests(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"))).scalar_one())


@pytest.fixture
async def timed_engine(make_engine: EngineFactory, db_url: str) -> Engine:
    return await make_engine(database_url=db_url, read_timeout_ms=TIMEOUT_MS, read_db_pool_size=2)


async def test_public_reads_answer_200_without_a_lock(timed_engine: Engine) -> None:
    for path, params, headers in PUBLIC_READS:
        answer, _ = await _timed(timed_engine.client, path, params, headers)
        assert answer.status_code == 200, (path, answer.text)


@pytest.mark.parametrize("table", TABLES)
async def test_a_locked_table_gives_read_timeout_while_order_reads_answer(
        timed_engine: Engine, db: AsyncEngine, table: str) -> None:
    engine = timed_engine
    order_id = await _stored_order(db)
    # The reads of each table (the ticker and positions read trades as well as their aggregate).
    reads = [(p, q, h) for p, q, h in PUBLIC_READS if table in _TABLES_OF[p]]
    assert reads
    # Its pool connected beforehand, as in a running service: the timing below is the pool's, not a connect's.
    assert (await engine.get(order_id, headers=KEY_A)).status_code == 200
    async with locked(db, table):
        # All at once: more than the public pool's 2 connections, so some wait for the pool, some for the lock.
        pending = [asyncio.create_task(_timed(engine.client, p, q, h)) for p, q, h in reads * 2]
        await asyncio.sleep(0.05)
        # The order read's pool is not the one the public reads fill.
        order, took = await _timed(engine.client, f"/orders/{order_id}", {}, KEY_A)
        assert order.status_code == 200, order.text
        assert order.json()["status"] == "cancelled" and took < 0.25
        for (path, _, _), task in zip(reads * 2, pending, strict=True):
            _assert_read_timeout(*await task, path)
        # None of the statements given up on is still queued behind the lock.
        assert await _waiting_lock_requests(db) == 0
    for path, params, headers in reads:
        answer, _ = await _timed(engine.client, path, params, headers)
        assert answer.status_code == 200, (path, answer.text)



async def test_a_full_public_pool_gives_read_timeout(timed_engine: Engine) -> None:
    """The deadline covers waiting for a connection: both of the pool's held elsewhere, a read still ends."""
    engine = timed_engine
    async with AsyncExitStack() as held:
        for _ in range(2):
            await held.enter_async_context(engine.ctx.public_reads.engine.connect())
        answer, took = await _timed(engine.client, "/trades", {}, {})
        _assert_read_timeout(answer, took, "/trades")
    answer, _ = await _timed(engine.client, "/trades", {}, {})
    assert answer.status_code == 200


async def test_statement_timeout_is_on_the_public_pool_only(timed_engine: Engine) -> None:
    async with timed_engine.ctx.public_reads.engine.connect() as conn:
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar_one() == f"{TIMEOUT_MS}ms"
        # No JIT compilation and no parallel workers for the public reads (pg_reads.PUBLIC_READ_SETTINGS).
        assert (await conn.execute(text("SHOW jit"))).scalar_one() == "off"
        assert (await conn.execute(text("SHOW max_parallel_workers_per_gather"))).scalar_one() == "0"
    async with timed_engine.ctx.db.connect() as conn:
        # Order reads and the admin's settlement: no timeout.
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar_one() == "0"


async def test_the_server_ends_a_statement_on_its_own(db_url: str, db: AsyncEngine) -> None:
    """statement_timeout alone, the client's deadline out of the way: the server cancels the statement and
    the read still answers read_timeout."""
    reads = PublicReads(db_url, TIMEOUT_MS, 1)
    reads.timeout_ms = 10_000  # the client's deadline only; the pool's connections keep 300 ms
    try:
        async with locked(db, "trades"):
            started = time.monotonic()
            with pytest.raises(ApiError) as raised:
                await reads.run(lambda conn: conn.execute(text("SELECT count(*) FROM trades")))
            assert time.monotonic() - started < PROMPT_S
        assert (raised.value.status, raised.value.code) == (503, "read_timeout")
        assert raised.value.headers == {"Retry-After": "1"}
        # The connection the server's cancel ended is fine for the next read.
        assert await reads.run(lambda conn: conn.execute(text("SELECT 1"))) is not None
    finally:
        await reads.close()


def test_read_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("READ_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("INGEST_READ_DB_POOL", raising=False)
    settings = IngestSettings.from_env()
    assert (settings.read_timeout_ms, settings.read_db_pool_size) == (2000, 2)
    monkeypatch.setenv("READ_TIMEOUT_MS", "300")
    monkeypatch.setenv("INGEST_READ_DB_POOL", "5")
    settings = IngestSettings.from_env()
    assert (settings.read_timeout_ms, settings.read_db_pool_size) == (300, 5)
    for bad in ("0", "-5", "1.5", "2s", "2147483648"):
        monkeypatch.setenv("READ_TIMEOUT_MS", bad)
        with pytest.raises(SettingsError, match=re.escape(f"READ_TIMEOUT_MS={bad!r}")):
            IngestSettings.from_env()
    monkeypatch.setenv("READ_TIMEOUT_MS", "2147483647")
    assert IngestSettings.from_env().read_timeout_ms == 2**31 - 1
    monkeypatch.setenv("INGEST_READ_DB_POOL", "0")
    with pytest.raises(SettingsError, match="INGEST_READ_DB_POOL='0'"):
        IngestSettings.from_env()
