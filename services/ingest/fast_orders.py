"""/orders and POST /orders/batch straight from ASGI: the hot path skips Starlette's router, Request, middleware
and exception layers.

Profiles of ingest under load put a fifth of its CPU in routing and per-request wrapper objects; the two
endpoints that carry the load are answered here (place_order.answer_order, place_batch.answer_batch), and
everything else goes on to the Starlette app. This is the only route to POST /orders and POST /orders/batch:
the app has neither, so a middleware added to the app never sees an order.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.context import IngestContext
from services.ingest.errors import ErrorBody, json_response
from services.ingest.handling import read_asgi_body
from services.ingest.place_batch import answer_batch
from services.ingest.place_order import answer_order

logger = logging.getLogger(__name__)

PATH = "/orders"  # served for POST only (openapi.py describes it beside the app's routes)
BATCH_PATH = "/orders/batch"  # the same: a fixed path wins over /orders/{order_id} (no order id is "batch")
_ALLOW_POST = {"Allow": "POST"}


class OrdersFastPath:
    """ASGI middleware answering /orders and /orders/batch itself (POST, or 405 for other methods) and passing
    every other path on."""

    def __init__(self, app: ASGIApp, ctx: IngestContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == PATH:
            answer, limit = answer_order, self.ctx.settings.max_body_bytes
        elif path == BATCH_PATH:
            answer, limit = answer_batch, self.ctx.settings.batch_max_body_bytes
        else:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            # What Starlette's router answers for a method a route does not have.
            await json_response(ErrorBody("method_not_allowed", "Method Not Allowed"), 405, _ALLOW_POST)(
                scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            response = await answer(self.ctx, headers, lambda: read_asgi_body(headers, receive, limit))
        except ClientDisconnect:
            return
        except Exception:
            # The answer functions turn every expected failure into an answer; this is a bug, not bad input.
            logger.exception("unexpected error in POST %s", path)
            response = json_response(ErrorBody("internal", "unexpected error"), 500)
        await response(scope, receive, send)
