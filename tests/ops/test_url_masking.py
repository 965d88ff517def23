"""No password from REDIS_URL or DATABASE_URL reaches a log line: not at start, not in the failure lines."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from services.common.urls import mask_url
from services.runtime import binaries, probes
from services.runtime.process import ServerProcess
from tests.ops.test_logs import Line, read_log
from tests.processes import REPO_ROOT, Service, free_port

pytestmark = pytest.mark.timeout(120)

REDIS_PASSWORD = "redis-pw-5f4e3d2c1b0a"
WRONG_PASSWORD = "wrong-pw-a0b1c2d3e4f5"
DB_PASSWORD = "db-pw-0a1b2c3d4e5f"
SECRETS = (REDIS_PASSWORD, WRONG_PASSWORD, DB_PASSWORD)


def test_mask_url_hides_every_form_of_password() -> None:
    assert mask_url("redis://:s3cret@127.0.0.1:6390/0") == "redis://:***@127.0.0.1:6390/0"
    assert mask_url("rediss://default:s3cret@h:6380/0?ssl_cert_reqs=none") == (
        "rediss://default:***@h:6380/0?ssl_cert_reqs=none")
    assert mask_url("redis://h:6379/0?db=1&password=s3cret") == "redis://h:6379/0?db=1&password=***"
    assert mask_url("unix://:s3cret@/tmp/redis.sock?db=0") == "unix://:***@/tmp/redis.sock?db=0"
    # Unescaped `@` and `/` in the password, and a URL too broken to parse: masked all the same.
    assert mask_url("postgresql+asyncpg://postgres:p@ss/w@127.0.0.1:5440/trading") == (
        "postgresql+asyncpg://postgres:***@127.0.0.1:5440/trading")
    assert mask_url("redis://:s3cret@host:notaport/0") == "redis://:***@host:notaport/0"
    assert mask_url("postgresql://u@h/db?sslpassword=s3cret&host=/tmp") == (
        "postgresql://u@h/db?sslpassword=***&host=/tmp")
    # Nothing to hide: unchanged.
    assert mask_url("postgresql+asyncpg://postgres@127.0.0.1:5440/trading") == (
        "postgresql+asyncpg://postgres@127.0.0.1:5440/trading")
    assert mask_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


@pytest.fixture(scope="module")
def protected_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this module's own that requires REDIS_PASSWORD (the shipped server, a free port); its URL."""
    directory = tmp_path_factory.mktemp("protected-redis")
    port = free_port()
    argv = [str(binaries.redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no", "--daemonize", "no"]
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    with ServerProcess("redis", argv, url, probes.redis_answers, directory / "redis.log", signal.SIGTERM):
        yield url


def _run_until(service: Service, logged: Callable[[list[Line]], bool], seconds: float = 30) -> list[Line]:
    """Start the service, wait for the lines `logged` looks for, SIGTERM it; every line it wrote."""
    with service.log_path.open("ab") as log:
        service.process = subprocess.Popen([sys.executable, "-m", f"services.{service.name}"], env=service.env,
                                           cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    try:
        while not (service.log_path.exists() and logged(_lines(service.log_path))):
            assert service.process.poll() is None, service.log_path.read_text()
            assert time.monotonic() < deadline, f"not logged after {seconds}s: {service.log_path.read_text()}"
            time.sleep(0.1)
    finally:
        service.stop()
    text = service.log_path.read_text()
    for secret in SECRETS:
        assert secret not in text, f"{service.name} logged a password: {text}"
    return read_log(service.log_path)


def _lines(path: Path) -> list[Line]:
    try:
        return read_log(path)
    except ValueError:  # a line half written
        return []


def _env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    prefix = f"test-mask-{uuid.uuid4().hex[:8]}:"
    return {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "REDIS_KEY_PREFIX": prefix, "LOG_LEVEL": "DEBUG",
            **extra}


def _with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def test_a_wrong_redis_password_is_logged_masked(protected_redis: str, database_url: str, tmp_path: Path) -> None:
    wrong = protected_redis.replace(REDIS_PASSWORD, WRONG_PASSWORD)
    shown = mask_url(wrong)
    assert shown.startswith("redis://:***@127.0.0.1:")
    db_url = _with_password(database_url, DB_PASSWORD)
    broadcaster = Service("broadcaster", _env(wrong, db_url, BROADCASTER_PORT=str(free_port())), "",
                          tmp_path / "broadcaster.log")
    lines = _run_until(broadcaster, lambda ls: any("Redis unreachable at start" in line["msg"] for line in ls))
    assert any(shown in line["msg"] for line in lines)
    ingest = Service("ingest", _env(wrong, db_url, INGEST_PORT=str(free_port())), "", tmp_path / "ingest.log")
    lines = _run_until(ingest, lambda ls: any("cannot load Lua scripts" in line["msg"] for line in ls))
    assert any(shown in line["msg"] for line in lines)


def test_an_unreachable_database_is_logged_masked(protected_redis: str, database_url: str, tmp_path: Path) -> None:
    # The right Redis password (the matcher runs on the protected server); PostgreSQL where nothing listens.
    closed = _with_password(database_url, DB_PASSWORD)
    closed = make_url(closed).set(port=free_port()).render_as_string(hide_password=False)
    matcher = Service("matcher", _env(protected_redis, closed, MATCHER_METRICS_PORT=str(free_port())), "",
                      tmp_path / "matcher.log")
    lines = _run_until(matcher, lambda ls: any(line["msg"].startswith("postgresql unavailable") for line in ls))
    databases = {line["database"] for line in lines if "database" in line}
    assert databases == {mask_url(closed)}, databases
    assert ":***@" in mask_url(closed)
