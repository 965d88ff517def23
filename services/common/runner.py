"""The one way a service process runs, as arq has one worker: logs, settings, uvloop, signals, drain.

Every `python -m services.<name>` is `run_service(name, Settings.from_env, serve)`, where
`serve(settings, stop)` starts the service and returns once `stop` is set and the work in hand is done:
a worker finishes and acknowledges its batch, an HTTP server (`Server` below) its open requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import uvicorn
import uvloop
from redis.exceptions import AuthenticationError

from services.common.env import SettingsError, env_str
from services.common.instruments import InstrumentError
from services.common.logs import setup_logging

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
CONFIG_ERROR_EXIT = 2
START_FAILED_EXIT = 1

SettingsT = TypeVar("SettingsT")
Serve = Callable[[SettingsT, asyncio.Event], Awaitable[None]]


def run_service(name: str, settings_from_env: Callable[[], SettingsT], serve: Serve[SettingsT]) -> None:
    """Run one service process: JSON logs, settings read once, `serve` on uvloop until SIGTERM/SIGINT, exit 0."""
    # Logging first (LOG_LEVEL, LOG_FILE), so that a configuration error is one JSON line like every other.
    level, file = env_str("LOG_LEVEL", "INFO"), env_str("LOG_FILE", "")
    try:
        setup_logging(name, level, file or None)
    except OSError as exc:
        setup_logging(name, level)
        logger.error("cannot open LOG_FILE=%r: %s", file, exc, extra={"event": "config_error"})
        sys.exit(CONFIG_ERROR_EXIT)
    try:
        settings = settings_from_env()
        uvloop.run(serve_until_signalled(serve, settings))
    except (SettingsError, InstrumentError) as exc:
        logger.error("cannot start: %s", exc, extra={"event": "config_error"})
        sys.exit(CONFIG_ERROR_EXIT)
    except ServerFailed as exc:
        logger.error("cannot start: %s", exc, extra={"event": "start_failed"})
        sys.exit(START_FAILED_EXIT)
    except AuthenticationError as exc:
        # Credentials are configuration: no retry can fix them, and a traceback would hide the one useful line.
        logger.error("Redis refused the credentials of REDIS_URL: %s", exc, extra={"event": "config_error"})
        sys.exit(CONFIG_ERROR_EXIT)


async def serve_until_signalled(serve: Serve[SettingsT], settings: SettingsT) -> None:
    """`serve(settings, stop)`, with SIGTERM and SIGINT setting `stop`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(settings, stop)
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def cancel_on_stop(stop: asyncio.Event, work: Coroutine[Any, Any, None],
                         on_stop: Callable[[], None] = lambda: None) -> None:
    """Run `work` until it ends, or until `stop` is set: then call `on_stop()` and cancel it.

    Only for work whose every await may be cut short (the matcher's: a script already sent completes
    atomically in Redis). Workers that must finish a batch watch `stop` between batches instead.
    """
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            on_stop()
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class ServerFailed(RuntimeError):
    """An HTTP server ended before it listened: its port is taken, or its app's startup failed."""


class Server(uvicorn.Server):
    """uvicorn's server for every HTTP listener here; SIGTERM/SIGINT belong to run_service, not to uvicorn."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handlers re-raise the signal after a clean shutdown, so the exit would not be 0.
        yield

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve in the background; returns once listening, raises ServerFailed if it never does."""
        self._task = asyncio.create_task(self._serve_or_fail(sockets))
        while not self.started:
            if self._task.done():
                self._task.result()
                raise ServerFailed(f"the server on {self.config.host}:{self.config.port} ended before it served")
            await asyncio.sleep(0.01)

    async def _serve_or_fail(self, sockets: list[socket.socket] | None) -> None:
        try:
            await self.serve(sockets)
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind or its lifespan fails; here that is the
            # caller's error to handle (a SystemExit in a task would end the event loop at once).
            raise ServerFailed(f"cannot serve on {self.config.host}:{self.config.port} (uvicorn exit "
                               f"{exc.code}; see the log above)") from exc

    async def stop(self) -> None:
        """Shut down gracefully: stop accepting, let open requests finish, end the app's lifespan."""
        self.should_exit = True
        if self._task is not None:
            await self._task

    async def serve_until(self, stop: asyncio.Event, sockets: list[socket.socket] | None = None) -> None:
        """Serve until `stop` is set (or the server ends by itself), then shut down gracefully."""
        await self.start(sockets)
        assert self._task is not None
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait((self._task, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        await self.stop()
