"""The engine's own PostgreSQL: initdb on first start, its command line, and the user it runs as."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from services.runtime import binaries, datadir
from services.runtime.settings import RuntimeSettings


class PostgresSetupError(RuntimeError):
    """The data directory cannot be made or used."""


@dataclass(frozen=True, slots=True)
class OsUser:
    """The unprivileged account a root engine runs PostgreSQL as (PostgreSQL refuses root)."""

    name: str
    uid: int
    gid: int


def os_user(settings: RuntimeSettings) -> OsUser | None:
    """None when the engine is not root: PostgreSQL then runs as the engine's own user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(settings.postgres_os_user)
    except KeyError as exc:
        raise PostgresSetupError(f"ENGINE_PG_OS_USER={settings.postgres_os_user!r} is no user on this machine; "
                                 "PostgreSQL refuses to run as root and needs one") from exc
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _searchable(path: Path, user: OsUser) -> bool:
    mode = path.stat()
    if mode.st_uid == user.uid:
        return bool(mode.st_mode & stat.S_IXUSR)
    if mode.st_gid == user.gid:
        return bool(mode.st_mode & stat.S_IXGRP)
    return bool(mode.st_mode & stat.S_IXOTH)


def make_reachable(path: Path, user: OsUser) -> None:
    """Give `user` search permission on every directory above `path` that lacks it, saying so.

    A root engine cloned under /root would otherwise have a PostgreSQL that cannot reach its own
    binaries or data. Search (x) lets it pass through a directory without listing it.
    """
    for parent in reversed(path.resolve().parents):
        if not _searchable(parent, user):
            parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
            print(f"note: gave others search permission (o+x) on {parent}, so that PostgreSQL, which refuses "
                  f"to run as root, can reach its files as user {user.name}", file=sys.stderr)


def prepare(settings: RuntimeSettings) -> None:
    """Create the cluster on first start (user postgres, trust from 127.0.0.1); refuse another major version."""
    pgdata, shipped = settings.postgres_dir, binaries.postgres_version()
    datadir.check_postgres(pgdata, settings.data_dir, shipped)
    user = os_user(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        make_reachable(binaries.postgres_bin("postgres"), user)
        make_reachable(pgdata, user)
    if (pgdata / "PG_VERSION").is_file():
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        raise PostgresSetupError(f"{pgdata} is neither empty nor a PostgreSQL data directory: move it away, "
                                 "or `make clean-data`")
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    if user is not None:
        os.chown(pgdata, user.uid, user.gid)
    command = [str(binaries.postgres_bin("initdb")), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
               "--encoding=UTF8", "--locale=C", "--no-instructions"]
    done = subprocess.run(command, capture_output=True, text=True, **_as_user(user))
    if done.returncode != 0:
        raise PostgresSetupError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
    datadir.record(settings.data_dir, "postgres", shipped)


class RunAs(TypedDict, total=False):
    """subprocess keyword arguments that run a child as another user."""

    user: int
    group: int
    extra_groups: list[int]


def _as_user(user: OsUser | None) -> RunAs:
    return RunAs() if user is None else RunAs(user=user.uid, group=user.gid, extra_groups=[])


def popen_options(settings: RuntimeSettings) -> RunAs:
    """subprocess options that run the server as the right user."""
    return _as_user(os_user(settings))


def drop_privileges(settings: RuntimeSettings) -> None:
    """Before exec'ing the server from a root process: become the unprivileged user."""
    user = os_user(settings)
    if user is None:
        return
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)


def argv(settings: RuntimeSettings) -> list[str]:
    """The server's command line: TCP on loopback only (no Unix socket path to outgrow), fsync on."""
    return [
        str(binaries.postgres_bin("postgres")),
        "-D", str(settings.postgres_dir),
        "-p", str(settings.postgres_port),
        "-c", "listen_addresses=127.0.0.1",
        "-c", "unix_socket_directories=",
        "-c", "fsync=on",
        "-c", "synchronous_commit=on",
        "-c", "max_connections=200",
    ]

