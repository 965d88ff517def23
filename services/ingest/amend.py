"""PATCH /orders/{order_id}: amend a live order's price and/or total quantity.

Ingest checks the values against the order's instrument and enqueues the `amend` command with amend.lua (owner
and status checked atomically); the matcher applies it in stream order and stores the outcome under
res:{I}:<request_id>, which is polled for up to CANCEL_WAIT_MS: 200 with the order, 409 amend_rejected with the
order unchanged, or 202 amend_requested. `amend` is the same answer as (status, body) for the order-entry socket.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.common.auth import Principal
from services.common.wire import FINAL_STATUSES, decode_amend_outcome
from services.ingest.answers import Answer, answered
from services.ingest.context import IngestContext
from services.ingest.errors import (
    ApiError,
    ErrorDetail,
    client_halted,
    forbidden,
    instrument_halted,
    invalid,
    not_found,
    raw_json_response,
)
from services.ingest.handling import checked_order_id, order_id_of, read_body
from services.ingest.order_lookup import find_order
from services.ingest.validation import check_notional, check_price, check_quantity, decode_object, exact_decimal
from services.ingest.views import OrderView, render

logger = logging.getLogger(__name__)


class AmendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The PATCH /orders/{order_id} body as sent: the new total quantity (filled included) and/or the new price,
    each a JSON number or a decimal string read exactly (as in POST /orders)."""

    quantity: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    price: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class AmendRequested(msgspec.Struct, frozen=True):
    """202: the matcher's outcome did not arrive within CANCEL_WAIT_MS."""

    order_id: str
    status: str = "amend_requested"


class AmendRejected(msgspec.Struct, frozen=True):
    """409: the error body plus the order as it stands, unchanged."""

    error: str
    message: str
    details: Sequence[ErrorDetail]
    order: OrderView


_decoder = msgspec.json.Decoder(AmendRequest)
_encode = msgspec.json.Encoder().encode
# The field each rejection reason is about (reasons: the amend_rejected event's).
_REASON_FIELDS = {"quantity_not_above_filled": "quantity", "post_only_would_cross": "price", "price_band": "price"}


def decode_amend(body: bytes) -> AmendRequest:
    """A body as AmendRequest: ApiError 400 when it is not a JSON object, 422 naming a bad or unknown field."""
    return decode_object(_decoder, body)


async def patch_order(ctx: IngestContext, request: Request) -> Response:
    """PATCH /orders/{order_id}: checks in the order 413, 401, 400, 422, then 404 / 403 and the instrument's
    own 422s."""
    body = await read_body(request, ctx.settings.max_body_bytes)
    principal = ctx.authenticate(request)
    amend_request = decode_amend(body)
    status, content = await amend_order(ctx, principal, order_id_of(request), amend_request)
    return raw_json_response(content, status)


async def amend(ctx: IngestContext, principal: Principal, order_id: str, request: AmendRequest) -> Answer:
    """PATCH /orders/{order_id}'s (status, body) past its 413, 401, 400 (the order-entry socket's `amend`):
    every refusal as its error body, never an exception."""
    return await answered(amend_order(ctx, principal, order_id, request))


async def amend_order(ctx: IngestContext, principal: Principal, order_id: str, request: AmendRequest) -> Answer:
    """Validate, enqueue and wait for the amend of `order_id`; ApiError for 422, 404, 403 (and Redis errors)."""
    details: list[ErrorDetail] = []
    price = exact_decimal("price", request.price, details, nullable=False)
    quantity = exact_decimal("quantity", request.quantity, details, nullable=False)
    if details:
        raise invalid(details)
    if price is None and quantity is None:
        raise invalid([ErrorDetail("body", "an amend needs quantity, price or both")])
    found = await find_order(ctx, checked_order_id(order_id), principal)
    if isinstance(found, OrderView):
        # Known to PostgreSQL alone: not in the rebuilt book, so it is final.
        return _rejected(f"already_{found.status}", found)
    instrument, record = found.instrument, found.record
    try:
        price_ticks = None if price is None else check_price(price, instrument, details)
        quantity_lots = None if quantity is None else check_quantity(quantity, instrument, details)
    except ArithmeticError as exc:  # decimal corner cases must never become a 500
        raise invalid([ErrorDetail("body", f"not a usable number: {exc}")]) from None
    if price is not None and record.type == "market":
        details.append(ErrorDetail("price", "a market order has no price"))
    if details:
        raise invalid(details)
    if record.type == "limit":
        # The order as it would stand: the new price (or its own) x the new total quantity (or its own).
        try:
            check_notional(instrument, record.price_ticks if price_ticks is None else price_ticks,
                           record.quantity_lots if quantity_lots is None else quantity_lots)
        except ApiError as err:
            raise _counted(ctx, err) from None
    if record.status in FINAL_STATUSES:
        return _rejected(f"already_{record.status}", render(record, instrument))

    request_id = uuid.uuid4().hex
    requested = await ctx.store.request_amend(found.keys, order_id, principal, request_id, price_ticks,
                                              quantity_lots, record.client_id)
    if requested.kind == "unknown":
        raise not_found(f"no order {order_id!r}")
    if requested.kind == "forbidden":
        raise forbidden(f"order {order_id!r} belongs to another client")
    if requested.kind == "client_halted":
        raise _counted(ctx, client_halted(record.client_id))
    if requested.kind == "instrument_halted":
        raise _counted(ctx, instrument_halted(instrument.symbol))
    assert requested.record is not None
    if requested.kind == "final":
        return _rejected(f"already_{requested.record.status}", render(requested.record, instrument))
    ctx.activity.count("amend_requested")
    if ctx.settings.log_orders:
        logger.info("amend requested for order %s by %s", order_id, principal.label,
                    extra={"event": "amend_requested", "order_id": order_id, "request_id": request_id})

    deadline = time.monotonic() + ctx.settings.cancel_wait_ms / 1000
    stored = await ctx.store.wait_result(found.keys.result(request_id), deadline)
    if stored is None:
        return 202, _encode(AmendRequested(order_id))
    outcome = decode_amend_outcome(stored)
    # The matcher stored the outcome in the call that changed the record: the record read now has the change.
    after = await ctx.store.get(found.keys, order_id) or requested.record
    view = render(after, instrument)
    if outcome.outcome == "amend_rejected":
        return _rejected(outcome.reason, view)
    return 200, _encode(view)


def _counted(ctx: IngestContext, err: ApiError) -> ApiError:
    """`err`, counted in risk_rejections_total when a risk control refused."""
    ctx.metrics.refused(err.reason)
    return err


def _rejected(reason: str, view: OrderView) -> Answer:
    field = _REASON_FIELDS.get(reason, "order_id")
    return 409, _encode(AmendRejected("amend_rejected", f"the amend was rejected: {reason}",
                                      [ErrorDetail(field, reason)], view))
