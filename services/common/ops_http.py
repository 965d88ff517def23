"""The small HTTP endpoint every worker exposes: /metrics (Prometheus text) and /healthz (liveness)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def ops_app(registry: CollectorRegistry, is_alive: Callable[[], bool]) -> Starlette:
    """A Starlette app serving the registry's metrics and the worker's liveness."""

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        if is_alive():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "stalled"}, status_code=503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


class OpsServer:
    """Runs an ops app on uvicorn inside the worker's own event loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", loop="none")
        self._server = uvicorn.Server(config)
        # The worker owns SIGTERM/SIGINT; uvicorn would otherwise capture them for itself.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
