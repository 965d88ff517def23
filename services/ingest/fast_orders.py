"""/orders straight from ASGI: the hot path skips Starlette's router, Request, middleware and exception layers.

Profiles of ingest under load put a fifth of its CPU in routing and per-request wrapper objects; the one
endpoint that carries the load is answered here (place_order.answer_order), and everything else goes on
to the Starlette app. This is the only route to POST /orders: the app has none, so a middleware added to
the app never sees an order.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.context import IngestContext
from services.ingest.errors import ErrorBody, json_response
from services.ingest.handling import read_asgi_body
from services.ingest.place_order import answer_order

logger = logging.getLogger(__name__)

PATH = "/orders"  # served for POST only (openapi.py describes it beside the app's routes)
_ALLOW_POST = {"Allow": "POST"}


class OrdersFastPath:
    """ASGI middleware answering /orders itself (POST, or 405 for other methods) and passing every other path on."""

    def __init__(self, app: ASGIApp, ctx: IngestContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            # What Starlette's router answers for a method a route does not have.
            await json_response(ErrorBody("method_not_allowed", "Method Not Allowed"), 405, _ALLOW_POST)(
                scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.ctx.settings.max_body_bytes
        try:
            response = await answer_order(self.ctx, headers, lambda: read_asgi_body(headers, receive, limit))
        except ClientDisconnect:
            return
        except Exception:
            # answer_order turns every expected failure into its answer; this is a bug, not bad input.
            logger.exception("unexpected error in POST /orders")
            response = json_response(ErrorBody("internal", "unexpected error"), 500)
        await response(scope, receive, send)
