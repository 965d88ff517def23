"""Crashes and outages: a SIGKILLed worker, a dead consumer's entries, PostgreSQL going away."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import ensure_group
from services.common.instruments import Instruments
from services.common.keys import PERSISTER_GROUP, instrument_keys
from tests.conftest import TWO_INSTRUMENTS
from tests.persister.proxy import TcpProxy
from tests.persister.runner import spawn, workers
from tests.persister.workload import (
    counts,
    expected,
    group_pending,
    produce,
    settings_for,
    stored,
    wait_until_persisted,
    wait_until_read,
)
from tests.processes import free_port


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status), bytes(response.read())


async def _wait_http(url: str, within: float) -> tuple[int, bytes]:
    deadline = time.monotonic() + within
    while True:
        try:
            return await asyncio.to_thread(_get, url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_sigkill_mid_batch_then_restart_loses_and_doubles_nothing(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine, db_url: str,
        tmp_path: Path) -> None:
    await produce(redis, instruments, key_prefix, 1500, seed=11)
    want = await expected(redis, instruments, key_prefix)
    total = len(want.trades) + len(want.events)
    settings = settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS, batch=40)
    log = tmp_path / "persister.log"

    first = spawn(settings, log)
    try:
        deadline = time.monotonic() + 20
        while sum(await counts(db)) < total // 5:
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.005)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    persisted_at_kill = sum(await counts(db))
    assert persisted_at_kill < total, "the worker finished before it was killed: make the workload bigger"

    port = free_port()
    second = spawn(settings, log, PERSISTER_METRICS_PORT=str(port))
    try:
        await wait_until_persisted(db, want, 30)
        await wait_until_read(redis, instruments, key_prefix, 10)
        status, body = await _wait_http(f"http://127.0.0.1:{port}/healthz", 10)
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = await _wait_http(f"http://127.0.0.1:{port}/metrics", 10)
        metrics = body.decode()
        for name in ("persister_batch_size_bucket", "persister_batch_seconds_bucket",
                     'persister_rows_written_total{table="trades"}', "persister_dead_letters_total",
                     "persister_reclaimed_total", "stream_group_lag{", "stream_group_pending{"):
            assert name in metrics, name
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 10) == 0
    finally:
        second.kill()
        second.wait()

    assert await stored(db) == want
    assert await group_pending(redis, instruments, key_prefix) == 0
    events = [json.loads(line).get("event") for line in log.read_text().splitlines() if line.startswith("{")]
    assert events.count("start") == 2 and events.count("stop") == 1


async def test_entries_of_a_dead_consumer_are_reclaimed(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine,
        db_url: str) -> None:
    await produce(redis, instruments, key_prefix, 300, seed=12)
    want = await expected(redis, instruments, key_prefix)
    streams = {}
    for symbol in instruments:
        keys = instrument_keys(key_prefix, symbol)
        for key in (keys.trades, keys.events):
            await ensure_group(redis, key, PERSISTER_GROUP)
            streams[key] = ">"
    # A worker that read entries and died before acknowledging them.
    await redis.xreadgroup(PERSISTER_GROUP, "dead-1", streams, count=60)  # type: ignore[arg-type]
    assert await group_pending(redis, instruments, key_prefix) > 0

    settings = settings_for(redis_url, key_prefix, db_url, TWO_INSTRUMENTS, claim_idle_ms=300,
                            claim_every_ms=100)
    async with workers(settings, instruments):
        await wait_until_persisted(db, want, 20)
        await wait_until_read(redis, instruments, key_prefix, 10)
    assert await stored(db) == want
    for key in streams:
        consumers = {c["name"].decode(): c["pending"] for c in await redis.xinfo_consumers(key, PERSISTER_GROUP)}
        assert consumers.get("dead-1", 0) == 0


@pytest.mark.slow
async def test_database_outage_ends_with_everything_persisted(
        redis: Redis, redis_url: str, key_prefix: str, instruments: Instruments, db: AsyncEngine, db_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.persister")
    target = make_url(db_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = target.set(port=proxy.port).render_as_string(hide_password=False)
    settings = settings_for(redis_url, key_prefix, proxied, TWO_INSTRUMENTS, backoff_max_s=0.5)
    try:
        async with workers(settings, instruments):
            await produce(redis, instruments, key_prefix, 300, seed=13)
            await wait_until_persisted(db, await expected(redis, instruments, key_prefix), 20)
            before = await counts(db)

            await proxy.cut()
            await produce(redis, instruments, key_prefix, 300, seed=14, tag="b")
            want = await expected(redis, instruments, key_prefix)
            await asyncio.sleep(3)
            assert await counts(db) == before  # nothing could be written meanwhile
            assert await group_pending(redis, instruments, key_prefix) > 0  # held, not acknowledged

            await proxy.restore()
            await wait_until_persisted(db, want, 20)
            await wait_until_read(redis, instruments, key_prefix, 10)
    finally:
        await proxy.close()
    assert await stored(db) == want
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("db_lost") == 1 and events.count("db_regained") == 1
