"""The small HTTP endpoint every worker exposes: /metrics (Prometheus text) and /healthz (liveness)."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.common.runner import Server


def ops_app(registry: CollectorRegistry, is_alive: Callable[[], bool],
            details: Callable[[], dict[str, object]] = dict) -> Starlette:
    """A Starlette app serving the registry's metrics and the worker's liveness (with the worker's `details`)."""

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        if is_alive():
            return JSONResponse({"status": "ok", **details()})
        return JSONResponse({"status": "stalled", **details()}, status_code=503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


def ops_server(registry: CollectorRegistry, is_alive: Callable[[], bool], host: str, port: int,
               details: Callable[[], dict[str, object]] = dict) -> Server:
    """The ops app on uvicorn inside the worker's own event loop: `await start()`, later `await stop()`."""
    config = uvicorn.Config(ops_app(registry, is_alive, details), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="off", loop="none")
    return Server(config)
