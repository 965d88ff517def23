"""The ingest HTTP app: routes wired to the handlers, with the shared context's lifespan; and its server."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp

from services.common.runner import Server
from services.ingest import health
from services.ingest.admin import get_latest_snapshot, post_snapshots
from services.ingest.analytics_routes import get_candles, get_ticker
from services.ingest.cancel_all import post_cancel_all
from services.ingest.client_fills import get_client_fills
from services.ingest.client_orders import get_client_orders
from services.ingest.context import IngestContext
from services.ingest.dead_man import post_cancel_all_after
from services.ingest.errors import ErrorBody, json_response
from services.ingest.fast_orders import OrdersFastPath
from services.ingest.halts import client_halt, instrument_halt
from services.ingest.handling import Handler, guarded
from services.ingest.openapi import openapi_endpoint
from services.ingest.order_reads import cancel_order, order_by_method
from services.ingest.orderbook import get_orderbook
from services.ingest.positions_routes import get_positions
from services.ingest.settings import IngestSettings
from services.ingest.settlement_routes import post_settlement
from services.ingest.trade_socket import FRAME_MAX_BYTES, TradeEndpoint
from services.ingest.trades import get_trades

logger = logging.getLogger(__name__)

ContextHandler = Callable[[IngestContext, Request], Awaitable[Response]]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return json_response(ErrorBody(code, str(exc.detail)), exc.status_code, exc.headers)


def create_app(settings: IngestSettings) -> Starlette:
    """Build the app; Redis is reached only once the lifespan starts."""
    ctx = IngestContext(settings)

    def bind(handler: ContextHandler) -> Handler:
        return guarded(functools.partial(handler, ctx))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ctx.start()
        stopped = asyncio.Event()
        activity = asyncio.create_task(ctx.activity.run(stopped), name="ingest-activity-log")
        try:
            yield
        finally:
            stopped.set()
            await activity
            ctx.activity.close()
            await ctx.stop()

    routes = [
        # A fixed path before /orders/{order_id} (no order id is "cancel-all").
        Route("/orders/cancel-all", bind(post_cancel_all), methods=["POST"]),
        # One route for every method, so a 405 on this path lists them all in Allow.
        Route("/orders/{order_id}", bind(order_by_method), methods=["GET", "DELETE", "PATCH"]),
        Route("/orders/{order_id}/cancel", bind(cancel_order), methods=["POST"]),
        Route("/orderbook", bind(get_orderbook), methods=["GET"]),
        Route("/trades", bind(get_trades), methods=["GET"]),
        Route("/analytics/{instrument}/ticker", bind(get_ticker), methods=["GET"]),
        Route("/analytics/{instrument}/candles", bind(get_candles), methods=["GET"]),
        Route("/clients/{client_id}/positions", bind(get_positions), methods=["GET"]),
        Route("/clients/{client_id}/fills", bind(get_client_fills), methods=["GET"]),
        Route("/clients/{client_id}/orders", bind(get_client_orders), methods=["GET"]),
        Route("/clients/{client_id}/cancel-all-after", bind(post_cancel_all_after), methods=["POST"]),
        Route("/admin/settlements", bind(post_settlement), methods=["POST"]),
        Route("/admin/snapshots", bind(post_snapshots), methods=["POST"]),
        Route("/admin/snapshots/latest", bind(get_latest_snapshot), methods=["GET"]),
        Route("/admin/clients/{client_id}/halt", bind(client_halt), methods=["POST", "DELETE"]),
        Route("/admin/instruments/{symbol}/halt", bind(instrument_halt), methods=["POST", "DELETE"]),
        Route("/openapi.json", openapi_endpoint(settings.instruments, settings.batch_max_orders), methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", bind(health.readyz), methods=["GET"]),
        Route("/metrics", bind(health.metrics), methods=["GET"]),
        WebSocketRoute("/trade", TradeEndpoint(ctx)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error},
                    middleware=[cors(settings)])
    app.state.ctx = ctx
    return app


def cors(settings: IngestSettings) -> Middleware:
    """Cross-origin reads for the market page (the broadcaster's origin): exactly CORS_ORIGINS, never "*".

    Reads only (GET, no credentials): the page places no orders. An order needs an Authorization header,
    which a browser sends across origins only after a preflight, and the /orders fast path outside this app
    answers OPTIONS with 405.
    """
    return Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET"],
                      allow_credentials=False, max_age=600)


def serving_app(app: Starlette) -> ASGIApp:
    """What uvicorn serves: /orders answered by the fast path, outside Starlette's routing, middleware and
    error layers; the rest by `app` (whose lifespan passes straight through)."""
    return OrdersFastPath(app, app.state.ctx)


def uvicorn_config(app: ASGIApp, settings: IngestSettings) -> uvicorn.Config:
    """uvicorn on the caller's event loop: httptools, and the sans-I/O websockets protocol for /trade, which
    closes a connection sending a frame over FRAME_MAX_BYTES with 1009 before the app sees the frame."""
    # No proxy-header rewriting: nothing here reads the client's address, and it costs on every request.
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="none", http="httptools",
                          ws="websockets-sansio", ws_max_size=FRAME_MAX_BYTES, ws_per_message_deflate=False,
                          log_level="warning", access_log=False, lifespan="on", proxy_headers=False)


async def serve(settings: IngestSettings, stop: asyncio.Event) -> None:
    """Serve the ingest API until `stop` is set; requests in hand are answered before it returns."""
    config = uvicorn_config(serving_app(create_app(settings)), settings)
    logger.info("ingest starting", extra={"event": "start", "url": f"http://{settings.host}:{settings.port}",
                                          "instruments": list(settings.instruments), "auth_mode": settings.auth_mode})
    await Server(config).serve_until(stop)
    logger.info("ingest stopped", extra={"event": "stop"})
