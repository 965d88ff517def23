"""A data server as a child process of the caller: for tests, and for one-off commands while the engine is down."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from services.common.urls import mask_url
from services.runtime import postgres_server, probes, redis_server
from services.runtime.postgres_server import RunAs
from services.runtime.settings import RuntimeSettings


class ServerNotReady(RuntimeError):
    """The server did not answer in time."""


class ServerProcess:
    """Start a server, wait until it answers, stop it on exit (SIGTERM for Redis, fast shutdown for PostgreSQL)."""

    def __init__(self, name: str, argv: list[str], url: str, answers: Callable[[str], bool], log: Path,
                 stop_signal: int, options: RunAs | None = None) -> None:
        self.name = name
        self.argv = argv
        self.url = url
        self.answers = answers
        self.log = log
        self.stop_signal = stop_signal
        self.options: RunAs = options or RunAs()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, **self.options)
        try:
            answered = probes.wait_until(self._alive_and_answers, self.url, timeout_s)
        except BaseException:  # e.g. CredentialsRefused: never leave the server running behind the error
            self.stop()
            raise
        if not answered:
            self.stop()
            raise ServerNotReady(f"{self.name} did not answer at {mask_url(self.url)} within {timeout_s}s; "
                                 f"see {self.log}")
        return self

    def _alive_and_answers(self, url: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServerNotReady(f"{self.name} exited with {self.process.returncode}; see {self.log}")
        return self.answers(url)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def redis_process(settings: RuntimeSettings) -> ServerProcess:
    """The engine's Redis for `settings` (data dir prepared), not yet started."""
    redis_server.prepare(settings)
    return ServerProcess("redis", redis_server.argv(settings), settings.redis_url, probes.redis_answers,
                         settings.log_dir / "redis.stdout.log", signal.SIGTERM)


def postgres_process(settings: RuntimeSettings) -> ServerProcess:
    """The engine's PostgreSQL for `settings` (cluster created if missing), not yet started."""
    postgres_server.prepare(settings)
    # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
    return ServerProcess("postgres", postgres_server.argv(settings), settings.database_url,
                         probes.postgres_answers, settings.log_dir / "postgres.log", signal.SIGINT,
                         postgres_server.popen_options(settings))
