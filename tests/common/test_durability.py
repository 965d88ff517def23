"""Redis's persistence settings, read and classified: what an acknowledged order is exposed to."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.common.durability import classify, read_durability, report_durability
from services.common.redis_conn import connect
from services.common.wire import text
from services.runtime.binaries import redis_server
from services.runtime.probes import redis_answers
from services.runtime.process import ServerProcess
from tests.processes import free_port

# (appendonly, appendfsync, save) -> (durable, words the exposure must contain)
CASES = [
    ("yes", "always", "", True, "every acknowledged order is on disk"),
    ("yes", "always", "3600 1", True, "every acknowledged order is on disk"),
    ("yes", "everysec", "", False, "a host crash can lose about the last second of acknowledged orders"),
    ("yes", "everysec", "3600 1 300 100", False, "appendfsync everysec"),
    ("yes", "no", "", False, "a host crash can lose that much of acknowledged orders"),
    ("yes", "unknown", "unknown", False, "unknown fsync policy"),
    ("no", "everysec", "3600 1 300 100 60 10000", False,
     "RDB snapshots only (save '3600 1 300 100 60 10000'): a restart returns older state, which the engine heals, "
     "but orders acknowledged after the last snapshot and not yet persisted are lost"),
    ("no", "always", "900 1", False, "RDB snapshots only"),  # fsync means nothing without an AOF
    ("no", "everysec", "", False, "no persistence: a Redis restart loses every acknowledged order not yet persisted"),
    ("no", "everysec", "unknown", False, "an unknown RDB schedule"),
    ("unknown", "unknown", "unknown", False, "persistence settings unknown (CONFIG GET refused"),
    ("YES", "Always", "", True, "every acknowledged order is on disk"),
]


@pytest.mark.parametrize(("appendonly", "appendfsync", "save", "durable", "words"), CASES)
def test_each_combination_names_its_exposure(appendonly: str, appendfsync: str, save: str, durable: bool,
                                             words: str) -> None:
    found = classify(appendonly, appendfsync, save)
    assert (found.appendonly, found.appendfsync, found.save) == (appendonly, appendfsync, save)
    assert found.durable is durable
    assert words in found.exposure


async def test_the_shared_redis_is_read_as_configured(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    raw = {}
    for name in ("appendonly", "appendfsync", "save"):
        raw.update({text(k): text(v) for k, v in (await redis.config_get(name)).items()})
    assert await read_durability(redis) == classify(raw["appendonly"], raw["appendfsync"], raw["save"])

    caplog.set_level(logging.INFO, logger="services.common.durability")
    found = await report_durability(redis)
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "redis_durability"]
    assert line.levelno == (logging.INFO if found.durable else logging.WARNING)
    assert (line.appendonly, line.appendfsync, line.save) == (raw["appendonly"], raw["appendfsync"], raw["save"])  # type: ignore[attr-defined]
    assert found.exposure in line.getMessage()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[object]:
    """start(*args) -> URL of a Redis-compatible server of this test's own (the engine's shipped binary)."""
    started: list[ServerProcess] = []

    def start(*args: str) -> str:
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        argv = [str(redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), *args]
        started.append(ServerProcess("redis", argv, url, redis_answers, tmp_path / f"redis-{port}.log",
                                     signal.SIGTERM).start(timeout_s=10))
        return url

    yield start
    for server in started:
        server.stop()



async def test_a_fully_durable_redis_and_one_that_refuses_config(private_redis: object,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.common.durability")
    durable = connect(private_redis("--appendonly", "yes", "--appendfsync", "always", "--save", ""))  # type: ignore[operator]
    # As a managed Redis does: CONFIG is not available to the engine.
    managed = connect(private_redis("--rename-command", "CONFIG", ""))  # type: ignore[operator]
    try:
        found = await report_durability(durable)
        assert (found.appendonly, found.appendfsync, found.save, found.durable) == ("yes", "always", "", True)
        assert await managed.ping()
        refused = await report_durability(managed)
        assert (refused.appendonly, refused.appendfsync, refused.save, refused.durable) == (
            "unknown", "unknown", "unknown", False)
    finally:
        await durable.aclose()
        await managed.aclose()
    lines = [r for r in caplog.records if getattr(r, "event", None) == "redis_durability"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.WARNING]
