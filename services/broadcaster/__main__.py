"""`python -m services.broadcaster`: serve the WebSocket feed until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
import uvloop

from services.broadcaster.app import create_app, listen_socket, uvicorn_config
from services.broadcaster.settings import BroadcasterSettings
from services.common.logs import setup_logging

logger = logging.getLogger("services.broadcaster")


async def main(settings: BroadcasterSettings) -> None:
    try:
        sock = listen_socket(settings)
    except OSError as exc:
        raise SystemExit(f"broadcaster cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    # Our own handlers: uvicorn's re-raise the signal after shutdown, which would not exit 0.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    logger.info("broadcaster starting", extra={"event": "start", "url": f"ws://{settings.host}:{settings.port}/stream",
                                               "instruments": list(settings.instruments),
                                               "auth_mode": settings.auth_mode})
    await server.serve(sockets=[sock])
    if not server.started:
        raise SystemExit("broadcaster did not start (see the log above)")
    logger.info("broadcaster stopped", extra={"event": "stop"})


def run() -> None:
    settings = BroadcasterSettings.from_env()
    setup_logging("broadcaster", settings.log_level)
    # uvicorn logs every WebSocket handshake at info; the sessions log connects and drops themselves.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    uvloop.run(main(settings))


if __name__ == "__main__":
    run()
