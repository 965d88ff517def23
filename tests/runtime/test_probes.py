"""Readiness probes authenticate with the URL's credentials, and wrong ones are an error at once, not a wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime import binaries, probes
from services.runtime.process import ServerProcess
from tests.processes import REPO_ROOT, free_port
from tests.secured_redis import PASSWORD, USER, USER_PASSWORD, auth_server


@pytest.fixture(scope="module")
def auth_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with auth_server(tmp_path_factory.mktemp("redis-auth")) as port:
        yield port


def test_the_redis_probe_authenticates(auth_port: int) -> None:
    assert probes.redis_answers(f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{auth_port}/0")
    assert probes.redis_answers(f"redis://:{PASSWORD}@127.0.0.1:{auth_port}/0")
    assert not probes.redis_answers(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")  # nothing there yet


@pytest.mark.parametrize("userinfo", [f"{USER}:wrong-password@", ":wrong-password@", ""])
def test_refused_credentials_are_an_error_that_hides_the_password(auth_port: int, userinfo: str) -> None:
    with pytest.raises(probes.CredentialsRefused, match=f"127.0.0.1:{auth_port}") as refused:
        probes.redis_answers(f"redis://{userinfo}127.0.0.1:{auth_port}/0")
    assert "wrong-password" not in str(refused.value)


def test_a_server_whose_probe_is_refused_is_stopped(tmp_path: Path) -> None:
    port = free_port()
    argv = [str(binaries.redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(tmp_path), "--requirepass", PASSWORD]
    server = ServerProcess("redis", argv, f"redis://:wrong-password@127.0.0.1:{port}/0", probes.redis_answers,
                           tmp_path / "redis.log", signal.SIGTERM)
    with pytest.raises(probes.CredentialsRefused):
        server.start(timeout_s=15)
    assert server.process is not None and server.process.poll() is not None


def test_make_run_says_which_credentials_are_refused(auth_port: int, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://{USER}:wrong-password@127.0.0.1:{auth_port}/0",
           "ENGINE_RUN_DIR": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.runtime", "ready"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 5  # at once, not after the wait for a server that does not answer
    assert "refused the credentials" in done.stderr and "Fix the user or password in REDIS_URL" in done.stderr
    assert "wrong-password" not in done.stdout + done.stderr
