"""Shared fixtures: real Redis and PostgreSQL, a key prefix and a database per test.

Servers: REDIS_URL / DATABASE_URL where set; else the local default ports where something answers; else
testcontainers where a Docker engine runs; else the engine's own server binaries (services/runtime), started
for the session on free ports with their data in a temporary directory: `make test` needs nothing installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.db import create_database, drop_database, migrate, with_database
from services.common.instruments import Instruments, load_instruments
from services.common.redis_conn import connect
from services.runtime.probes import redis_answers
from services.runtime.process import postgres_process, redis_process
from services.runtime.settings import RuntimeSettings
from tests.processes import docker_engine, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default fixture's instruments: the matcher's risk limits off (the existing tests trade at extreme prices).
TWO_INSTRUMENTS = REPO_ROOT / "tests" / "data" / "two_instruments.toml"
# The same instruments with the matcher's risk limits on (issue 16).
RISK_LIMITS = REPO_ROOT / "tests" / "data" / "risk_limits.toml"


@pytest.fixture(scope="session")
def own_servers() -> Iterator[RuntimeSettings]:
    """Where this session's own servers would run: free ports, data in a temporary directory."""
    # Not pytest's tmp_path_factory: another pytest session on the machine removes all but its three
    # newest base directories, which would delete a running server's data under it.
    run_dir = Path(tempfile.mkdtemp(prefix="engine-test-servers-"))
    yield RuntimeSettings(run_dir=run_dir, redis_port=free_port(), postgres_port=free_port(),
                          own_redis=True, own_postgres=True)
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(own_servers: RuntimeSettings) -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    if "REDIS_URL" in os.environ:
        pytest.fail(f"Redis does not answer at REDIS_URL={url}")
    if docker_engine():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.0") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    with redis_process(own_servers) as server:
        yield server.url


@pytest.fixture(scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def key_prefix(redis: Redis) -> AsyncIterator[str]:
    """A REDIS_KEY_PREFIX of this test's own; its keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 500):
        await redis.delete(*keys[start : start + 500])


@pytest.fixture(scope="session")
def instruments() -> Instruments:
    """BTC-USD (tick 0.01, lot 1e-8) and ETH-USD (tick 0.05, lot 0.001)."""
    return load_instruments(TWO_INSTRUMENTS)


@pytest.fixture(scope="session")
def risk_instruments() -> Instruments:
    """The same instruments with the matcher's risk limits on: BTC-USD band 10%, protection 5%, at most 3 resting
    orders per client; ETH-USD band 1.5%, protection 0.25%, at most 2."""
    return load_instruments(RISK_LIMITS)


# PostgreSQL ------------------------------------------------------------------------------------

DEFAULT_PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _pg_answers(url: str) -> bool:
    # A TCP check, not probes.postgres_answers: that one runs its own event loop.
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server_url(own_servers: RuntimeSettings) -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL's, else localhost, else a testcontainer, else the engine's own binaries."""
    url = os.environ.get("DATABASE_URL", DEFAULT_PG_SERVER)
    if _pg_answers(url):
        yield url
        return
    if "DATABASE_URL" in os.environ:
        pytest.fail(f"PostgreSQL does not answer at DATABASE_URL={url}")
    if docker_engine():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver="asyncpg") as container:
            yield container.get_connection_url()
        return
    with postgres_process(own_servers) as server:
        yield with_database(server.url, "postgres")


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database `test_<random>` for this session, migrated with Alembic, dropped at the end."""

    url = with_database(postgres_server_url, f"test_{uuid.uuid4().hex[:12]}")
    await migrate(url)
    yield url
    await drop_database(url)


@pytest.fixture
async def make_db(database_url: str) -> AsyncIterator[object]:
    """make_db() -> URL of a new database with the migrated schema (a TEMPLATE copy), dropped after the test."""
    made: list[str] = []
    base = make_url(database_url).database

    async def make() -> str:
        url = with_database(database_url, f"{base}_{uuid.uuid4().hex[:8]}")
        await create_database(url, template=database_url)
        made.append(url)
        return url

    yield make
    for url in made:
        await drop_database(url)


@pytest.fixture
async def db_url(make_db: object) -> str:
    """This test's own migrated database."""
    return await make_db()  # type: ignore[operator,no-any-return]


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(db_url)
    yield engine
    await engine.dispose()
