"""GET /orders/{order_id} and its cancel (POST /orders/{order_id}/cancel, DELETE /orders/{order_id}); PATCH, the
amend, is amend.py's."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from services.common.auth import Principal
from services.ingest.amend import patch_order
from services.ingest.context import IngestContext
from services.ingest.errors import ApiError, forbidden, json_response, not_found
from services.ingest.handling import order_id_of
from services.ingest.order_lookup import find_order
from services.ingest.views import CancelRequested, OrderView, render

logger = logging.getLogger(__name__)


async def get_order(ctx: IngestContext, request: Request) -> Response:
    principal = ctx.authenticate(request)
    found = await find_order(ctx, order_id_of(request), principal)
    if isinstance(found, OrderView):
        return json_response(found)
    return json_response(render(found.record, found.instrument))


async def order_by_method(ctx: IngestContext, request: Request) -> Response:
    """/orders/{order_id}: GET reads the order, DELETE cancels it, PATCH amends it."""
    if request.path_params.get("order_id") == "cancel-all":
        # POST /orders/cancel-all has its own route; its other methods land here: 405 as the router answers.
        raise ApiError(405, "method_not_allowed", "Method Not Allowed", headers={"Allow": "POST"})
    if request.method == "PATCH":
        return await patch_order(ctx, request)
    return await (cancel_order if request.method == "DELETE" else get_order)(ctx, request)


async def cancel_order(ctx: IngestContext, request: Request) -> Response:
    """POST /orders/{order_id}/cancel and DELETE /orders/{order_id}."""
    principal = ctx.authenticate(request)
    return await cancel(ctx, principal, order_id_of(request))


async def cancel(ctx: IngestContext, principal: Principal, order_id: str) -> Response:
    """Enqueue the cancel of `order_id` (a valid id's text), then wait up to CANCEL_WAIT_MS for the matcher's
    outcome; ApiError 404 or 403 (the order-entry socket's `cancel` too)."""
    found = await find_order(ctx, order_id, principal)
    if isinstance(found, OrderView):
        # Known to PostgreSQL alone: not in the rebuilt book, so it is final.
        return json_response(found, 409)
    order_id = found.record.order_id
    outcome = await ctx.store.request_cancel(found.keys, order_id, principal)
    if outcome.kind == "unknown":
        raise not_found(f"no order {order_id!r}")
    if outcome.kind == "forbidden":
        raise forbidden(f"order {order_id!r} belongs to another client")
    assert outcome.record is not None
    if outcome.kind == "final":
        return json_response(render(outcome.record, found.instrument), 409)
    ctx.activity.count("cancel_requested")
    if ctx.settings.log_orders:
        logger.info("cancel requested for order %s by %s", order_id, principal.label,
                    extra={"event": "cancel_requested", "order_id": order_id})
    record = await ctx.store.wait_final(found.keys, order_id, ctx.settings.cancel_wait_ms / 1000)
    if record is None or record.status not in ("cancelled", "filled", "rejected"):
        return json_response(CancelRequested(order_id), 202)
    return json_response(render(record, found.instrument), 200 if record.status == "cancelled" else 409)
