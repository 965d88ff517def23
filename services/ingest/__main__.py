"""`python -m services.ingest`: the ingest HTTP service under uvicorn, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
import uvloop

from services.common.logs import setup_logging
from services.ingest.app import create_app, serving_app
from services.ingest.settings import IngestSettings

logger = logging.getLogger("services.ingest")


async def main(settings: IngestSettings) -> None:
    # No proxy-header rewriting: nothing here reads the client's address, and it costs on every request.
    config = uvicorn.Config(serving_app(create_app(settings)), host=settings.host, port=settings.port, loop="none",
                            http="httptools", log_level="warning", access_log=False, lifespan="on",
                            proxy_headers=False)
    server = uvicorn.Server(config)
    # Our own handlers: uvicorn's re-raise the signal after a clean shutdown, so the exit would not be 0.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    logger.info("ingest starting", extra={"event": "start", "url": f"http://{settings.host}:{settings.port}",
                                          "instruments": list(settings.instruments), "auth_mode": settings.auth_mode})
    await server.serve()
    if not server.started:
        raise SystemExit(f"ingest did not start on {settings.host}:{settings.port} (see the log above)")
    logger.info("ingest stopped", extra={"event": "stop"})


def run() -> None:
    settings = IngestSettings.from_env()
    setup_logging("ingest", settings.log_level)
    uvloop.run(main(settings))


if __name__ == "__main__":
    run()
