"""Fixtures of the whole-engine tests."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.common.db import drop_database, with_database
from tests.e2e.engine import RunningEngine, engine_env, running_engine


@pytest.fixture
def own_run_dir() -> Iterator[Path]:
    """ENGINE_RUN_DIR of an engine that runs its own servers: a directory of its own, not under pytest's.

    Under root the engine's PostgreSQL runs as `nobody`, which must pass through every directory above its
    data: the engine grants that (o+x), but any other pytest session starting on the machine resets
    /tmp/pytest-of-<user> to 0700, which would lock the running server out of its own data.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="engine-run-"))
    yield run_dir
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
async def engine_db(postgres_server_url: str) -> AsyncIterator[str]:
    """A database that does not exist yet: `make run` must create and migrate it; dropped afterwards."""
    url = with_database(postgres_server_url, f"test_e2e_{uuid.uuid4().hex[:10]}")
    yield url
    await drop_database(url)


@pytest.fixture
def engine_instruments() -> Path | None:
    """The instruments file of the engine `running` starts (None: the repo's instruments.toml); modules override it."""
    return None


@pytest.fixture
def running(key_prefix: str, redis_url: str, engine_db: str, tmp_path: Path,
            engine_instruments: Path | None) -> Iterator[RunningEngine]:
    """A whole engine through `make run` on the test's Redis prefix and a database of its own."""
    env = engine_env(key_prefix, redis_url, engine_db, tmp_path)
    if engine_instruments is not None:
        env["INSTRUMENTS_FILE"] = str(engine_instruments)
    with running_engine(env, tmp_path) as engine:
        yield engine
