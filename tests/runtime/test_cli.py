"""`make redis-cli` on an operator's Redis that asks for a password: the password reaches redis-cli through
REDISCLI_AUTH, never its command line (which every local user can read in ps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.runtime.__main__ import redis_cli_target
from tests.processes import REPO_ROOT
from tests.secured_redis import USER, USER_PASSWORD, auth_server


def test_the_url_becomes_arguments_and_the_password_an_environment_variable() -> None:
    args, secret = redis_cli_target("rediss://ops%40x:p%3Ass@redis.example:6380/3")
    assert args == ["-h", "redis.example", "-p", "6380", "-n", "3", "--user", "ops@x", "--tls"]
    assert secret == {"REDISCLI_AUTH": "p:ss"}
    assert redis_cli_target("redis://127.0.0.1:6379") == (["-h", "127.0.0.1", "-p", "6379"], {})


def test_redis_cli_authenticates_on_a_password_protected_server(tmp_path: Path) -> None:
    with auth_server(tmp_path) as port:
        env = {**os.environ, "REDIS_URL": f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{port}/2",
               "ENGINE_RUN_DIR": str(tmp_path / "run")}
        env.pop("REDISCLI_AUTH", None)
        done = subprocess.run([sys.executable, "-m", "services.runtime", "cli", "redis", "ACL", "WHOAMI"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert done.stdout.strip() == USER, done.stdout + done.stderr
        assert USER_PASSWORD not in done.stderr


def test_an_unknown_client_is_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "services.runtime", "cli", "mysql"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "unknown client" in done.stderr
