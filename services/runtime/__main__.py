"""`python -m services.runtime <command>`: the steps of `make run` that concern the data services.

    plan                  prepare the engine's own servers' data, write the circus config, print shell exports
    serve redis|postgres  exec the server (circus runs this)
    ready                 wait until Redis and PostgreSQL answer, then create and migrate the database
    with-postgres CMD...  run CMD with DATABASE_URL set, starting the engine's PostgreSQL for it if it is down
    cli redis|psql [ARG...]  the server's own client, pointed at the engine's server
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import subprocess
import sys
import urllib.parse

from sqlalchemy.engine import make_url

from services.common.db import database_url, migrate
from services.common.env import SettingsError, redis_url
from services.common.urls import mask_url
from services.runtime import binaries, circus_config, postgres_server, probes, redis_server
from services.runtime.datadir import IncompatibleData
from services.runtime.postgres_server import PostgresSetupError
from services.runtime.process import postgres_process
from services.runtime.settings import DATABASE_NAME, RuntimeSettings

OWN_SERVER_START_S = 60.0
EXTERNAL_SERVER_WAIT_S = 5.0


class PortTaken(RuntimeError):
    """Something already listens where the engine's own server would."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def plan(settings: RuntimeSettings) -> str:
    """Prepare the data directories; the shell lines that export the URLs and circus variables."""
    exports = {"ENGINE_LOG_DIR": str(settings.log_dir)}
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    for own, port, variable in ((settings.own_redis, settings.redis_port, "ENGINE_REDIS_PORT"),
                                (settings.own_postgres, settings.postgres_port, "ENGINE_PG_PORT")):
        if own and not _port_free(port):
            raise PortTaken(f"127.0.0.1:{port} is taken: another engine runs (`make stop`), or another program "
                            f"listens there; set {variable} to a free port")
    if settings.own_redis:
        redis_server.prepare(settings)
        exports["REDIS_URL"] = settings.redis_url
    if settings.own_postgres:
        postgres_server.prepare(settings)
        exports["DATABASE_URL"] = settings.database_url
    exports["ENGINE_CIRCUS_INI"] = str(circus_config.write(settings))
    exports["ENGINE_DATA_WATCHERS"] = " ".join(circus_config.data_watchers(settings))
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in exports.items())


def serve(settings: RuntimeSettings, server: str) -> None:
    """Replace this process with the server, so that the supervisor watches (and restarts) the server itself."""
    if server == "redis":
        redis_server.prepare(settings)
        command = redis_server.argv(settings)
    elif server == "postgres":
        postgres_server.prepare(settings)
        command = postgres_server.argv(settings)
        postgres_server.drop_privileges(settings)
    else:
        raise SystemExit(f"unknown server {server!r}: redis or postgres")
    os.execv(command[0], command)


def ready(settings: RuntimeSettings) -> int:
    """Wait for both servers (the engine's own ones up to a minute), then create and migrate the database."""
    checks = (("Redis", redis_url(), probes.redis_answers, settings.own_redis, "REDIS_URL"),
              ("PostgreSQL", database_url(), probes.postgres_answers, settings.own_postgres, "DATABASE_URL"))
    for name, url, answers, own, variable in checks:
        shown = mask_url(url)
        try:
            if probes.wait_until(answers, url, OWN_SERVER_START_S if own else EXTERNAL_SERVER_WAIT_S):
                continue
        except probes.CredentialsRefused as refused:
            print(f"error: {refused}. Fix the user or password in {variable}.", file=sys.stderr)
            return 1
        if own:
            print(f"error: the engine's own {name} did not answer at {shown} within {OWN_SERVER_START_S:.0f}s; "
                  f"see {settings.log_dir}", file=sys.stderr)
        else:
            print(f"error: {name} does not answer at {shown} ({variable}). Start it, or unset {variable} so "
                  f"that the engine runs its own.", file=sys.stderr)
        return 1
    asyncio.run(migrate(database_url()))
    return 0


def with_postgres(settings: RuntimeSettings, command: list[str]) -> int:
    """Run `command` against the engine's database, starting the engine's PostgreSQL for it when it is down."""
    if not settings.own_postgres or probes.postgres_answers(settings.database_url):
        env = os.environ if not settings.own_postgres else {**os.environ, "DATABASE_URL": settings.database_url}
        return subprocess.run(command, env=env).returncode
    print(f"the engine is stopped: starting its PostgreSQL on :{settings.postgres_port} for this command",
          file=sys.stderr)
    with postgres_process(settings):
        env = {**os.environ, "DATABASE_URL": settings.database_url}
        return subprocess.run(command, env=env).returncode


def redis_cli_target(url: str) -> tuple[list[str], dict[str, str]]:
    """redis-cli's arguments for a Redis URL, and its password as REDISCLI_AUTH: never on the command line,
    where every local user could read it (ps, /proc/<pid>/cmdline)."""
    parts = urllib.parse.urlsplit(url)
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    database = parts.path.strip("/")
    if database:
        args += ["-n", database]
    if parts.username:
        args += ["--user", urllib.parse.unquote(parts.username)]
    if parts.scheme == "rediss":
        args.append("--tls")
    secret = {"REDISCLI_AUTH": urllib.parse.unquote(parts.password)} if parts.password else {}
    return args, secret


def cli(settings: RuntimeSettings, client: str, args: list[str]) -> None:
    """exec the shipped client against the engine's server (or the operator's, given by its URL); a password
    goes in the client's environment variable, never on its command line."""
    secret: dict[str, str] = {}
    if client == "redis":
        if settings.own_redis:
            target = ["-p", str(settings.redis_port)]
        else:
            target, secret = redis_cli_target(redis_url())
        command = [str(binaries.redis_cli()), *target, *args]
    elif client == "psql":
        url = make_url(settings.database_url if settings.own_postgres else database_url())
        command = [str(binaries.postgres_bin("psql")), "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
                   "-U", url.username or "postgres", *args, url.database or DATABASE_NAME]
        secret = {"PGPASSWORD": url.password} if url.password else {}
    else:
        raise SystemExit(f"unknown client {client!r}: redis or psql")
    os.execve(command[0], command, {**os.environ, **secret})


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    try:
        settings = RuntimeSettings.from_env()
        if command == "plan":
            sys.stdout.write(plan(settings))
            return 0
        if command == "serve" and len(rest) == 1:
            serve(settings, rest[0])
        if command == "ready":
            return ready(settings)
        if command == "with-postgres" and rest:
            return with_postgres(settings, rest[1:] if rest[0] == "--" else rest)
        if command == "cli" and rest:
            cli(settings, rest[0], rest[1:])
    except (SettingsError, IncompatibleData, PostgresSetupError, PortTaken, binaries.MissingServer) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
