"""`python -m services.apikeys` as a real subprocess, for the tests of the CLI and of the services' reload."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.processes import REPO_ROOT


def apikeys(keys_file: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI on `keys_file` (API_KEYS_FILE; None: unset) and return its exit code and output."""
    env = {k: v for k, v in os.environ.items() if k != "API_KEYS_FILE"}
    if keys_file is not None:
        env["API_KEYS_FILE"] = str(keys_file)
    return subprocess.run([sys.executable, "-m", "services.apikeys", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)


def create_key(keys_file: Path, role: str, client: str | None = None) -> tuple[str, str]:
    """A new key in `keys_file`: (KEY_ID, KEY), read from the last line the CLI prints."""
    args = ["create", "--role", role] + (["--client", client] if client else [])
    done = apikeys(keys_file, *args)
    assert done.returncode == 0, done.stderr
    key_id, key = done.stdout.splitlines()[-1].split(" ")
    return key_id, key


def revoke_key(keys_file: Path, key_id: str) -> None:
    done = apikeys(keys_file, "revoke", key_id)
    assert done.returncode == 0, done.stderr
