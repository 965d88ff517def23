"""The data directory's version checks: another PostgreSQL major, or a newer Redis AOF, is refused clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime import binaries, datadir
from services.runtime.datadir import IncompatibleData
from tests.processes import REPO_ROOT


def test_postgres_of_another_major_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    datadir.record(tmp_path, "postgres", "15.19")
    with pytest.raises(IncompatibleData) as refused:
        datadir.check_postgres(pgdata, tmp_path, "18.6")
    message = str(refused.value)
    assert "PostgreSQL 15.19" in message and "PostgreSQL 18.6" in message
    assert "pg_dumpall" in message and "make clean-data" in message


def test_postgres_of_the_same_major_version_is_used(tmp_path: Path) -> None:
    (tmp_path / "PG_VERSION").write_text("18\n")
    datadir.check_postgres(tmp_path, tmp_path, "18.6")


def test_redis_data_of_a_newer_server_is_refused_and_an_older_one_used(tmp_path: Path) -> None:
    aof = tmp_path / "redis"
    aof.mkdir()
    (aof / "appendonly.aof.1.base.rdb").write_bytes(b"REDIS0011")
    datadir.record(tmp_path, "redis", "valkey 9.0.1")
    with pytest.raises(IncompatibleData, match=r"valkey 9\.0\.1"):
        datadir.check_redis(aof, tmp_path, "valkey 8.1.8")
    datadir.record(tmp_path, "redis", "redis 7.0.15")
    datadir.check_redis(aof, tmp_path, "valkey 8.1.8")


def test_the_shipped_binaries_report_their_versions() -> None:
    assert binaries.major(binaries.postgres_version()) >= 15
    assert binaries.redis_version().startswith(("valkey 8", "redis 7"))


def test_make_run_refuses_another_major_version_before_starting_anything(tmp_path: Path) -> None:
    """`services.runtime plan` (make run's first step) exits 1 with the message, no server started."""
    pgdata = tmp_path / "data" / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ENGINE_RUN_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "services.runtime", "plan"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "made by PostgreSQL 15" in done.stderr and "make clean-data" in done.stderr
    assert (pgdata / "PG_VERSION").read_text() == "15\n"
