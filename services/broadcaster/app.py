"""The broadcaster's ASGI app: WebSocket /stream, the market page, /healthz, /readyz, /metrics; its uvicorn config."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from services.broadcaster.context import BroadcasterContext
from services.broadcaster.page import page_routes
from services.broadcaster.session import SERVER_SEND, Session
from services.broadcaster.settings import BroadcasterSettings
from services.common.runner import Server

logger = logging.getLogger(__name__)


def create_app(settings: BroadcasterSettings) -> Starlette:
    """A Starlette app whose lifespan starts and stops the stream reader."""
    ctx = BroadcasterContext(settings)

    async def stream(websocket: WebSocket) -> None:
        await Session(ctx, websocket).run()

    async def healthz(_: Request) -> Response:
        if ctx.is_alive():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "reader stopped"}, status_code=503)

    async def readyz(_: Request) -> Response:
        if ctx.reader.is_ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "redis unreachable"}, status_code=503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await ctx.start()
        try:
            yield
        finally:
            await ctx.stop()

    app = Starlette(
        routes=[WebSocketRoute("/stream", stream), Route("/healthz", healthz), Route("/readyz", readyz),
                Route("/metrics", metrics), *page_routes(settings)],
        lifespan=lifespan,
        middleware=[Middleware(KeepServerSend)],
    )
    app.state.ctx = ctx
    return app


class KeepServerSend:
    """Keeps the server's own `send` in the scope, so a session can reset a peer that stopped reading."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


def uvicorn_config(app: Starlette, settings: BroadcasterSettings) -> uvicorn.Config:
    """uvicorn on the caller's (uvloop) event loop, httptools, and the sans-I/O websockets protocol."""
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="none", http="httptools", ws="websockets-sansio",
        ws_max_size=settings.ws_max_size, ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s, ws_per_message_deflate=False, lifespan="on",
        log_config=None, access_log=False, timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


def listen_socket(settings: BroadcasterSettings) -> socket.socket:
    """The bound listening socket; accepted connections inherit its send buffer size.

    BROADCASTER_SEND_BUFFER_BYTES caps the kernel buffer a client that stops reading can fill (Linux
    autotunes it up to 4 MiB per connection), so the queue bound, not the kernel, decides how far
    behind a client may fall.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    try:
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(settings: BroadcasterSettings, stop: asyncio.Event) -> None:
    """Serve the WebSocket feed until `stop` is set; connected clients are then closed with 1012."""
    # uvicorn logs every WebSocket handshake at info; the sessions log connects and drops themselves.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    try:
        sock = listen_socket(settings)
    except OSError as exc:
        raise SystemExit(f"broadcaster cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    logger.info("broadcaster starting", extra={"event": "start", "url": f"ws://{settings.host}:{settings.port}/stream",
                                               "instruments": list(settings.instruments),
                                               "auth_mode": settings.auth_mode})
    await Server(uvicorn_config(create_app(settings), settings)).serve_until(stop, [sock])
    logger.info("broadcaster stopped", extra={"event": "stop"})
