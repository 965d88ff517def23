"""POST /orders/batch: up to BATCH_MAX_ORDERS orders in one request, each answered as POST /orders would answer
it alone, with one accept.lua call per instrument (issue 14: the cost per order falls with the batch).

Request-level checks, in the contract's order: 413 (BATCH_MAX_BODY_BYTES), 401, 400 (not JSON, not an object),
422 (`orders` missing, not a list, empty or over BATCH_MAX_ORDERS; the Idempotency-Key header). Past them the
answer is 200 with one result per order, in order: each order goes through place_order's own checks (400, 422,
403) and settlement (201, 200 replay, 409, 429, 503), so its status and body are POST /orders's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import Response

from services.common.auth import Principal
from services.common.redis_batch import BatcherClosed
from services.ingest.accept import Outcome, Placement, accept_orders
from services.ingest.context import IngestContext
from services.ingest.errors import ApiError, ErrorDetail, invalid, raw_json_response, too_large
from services.ingest.handling import redis_unavailable
from services.ingest.place_order import answer_timed, checked_order, limits_of, log_order, placement_of, refusal, settle
from services.ingest.validation import decode_object


class BatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The POST /orders/batch body as sent: each order stays raw JSON until it is checked on its own."""

    orders: list[msgspec.Raw]


class BatchError(msgspec.Struct, frozen=True):
    """A refused order's error: POST /orders's error body, plus `retry_after_s` for 429 and 503."""

    error: str
    message: str
    details: Sequence[ErrorDetail] = ()
    retry_after_s: int | msgspec.UnsetType = msgspec.UNSET


class BatchRefusal(msgspec.Struct, frozen=True):
    """One result: the status POST /orders would have answered and its error."""

    status: int
    error: BatchError


class BatchAccepted(msgspec.Struct, frozen=True):
    """One result (for the OpenAPI document; answers splice the stored 201 body in as bytes)."""

    status: int
    order: msgspec.Raw


_decoder = msgspec.json.Decoder(BatchRequest)
_encode = msgspec.json.Encoder().encode
_RETRY_STATUSES = (429, 503)


async def answer_batch(ctx: IngestContext, headers: Headers, body: Callable[[], Awaitable[bytes]]) -> Response:
    """Answer one POST /orders/batch and record its latency and each order's outcome."""
    return await answer_timed(ctx, headers, body, place_batch, ctx.metrics.batch_latency)


async def place_batch(ctx: IngestContext, principal: Principal, body: bytes, idempotency_header: str | None,
                      session: str = "") -> Response:
    """POST /orders/batch's answer past its 413 and 401 (the order-entry socket's `place_batch` too): the
    request-level 400 and 422, else 200 with each order's result. `session`: the cancel-on-disconnect session
    the orders are placed through ("" none)."""
    try:
        raw_orders = _checked_batch(ctx, body, idempotency_header)
    except ApiError as err:
        return refusal(ctx, err, None)
    return raw_json_response(await _place(ctx, principal, raw_orders, session))


def _checked_batch(ctx: IngestContext, body: bytes, idempotency_header: str | None) -> list[msgspec.Raw]:
    request = decode_object(_decoder, body)
    limit = ctx.settings.batch_max_orders
    if not request.orders:
        raise invalid([ErrorDetail("orders", "must hold at least 1 order")])
    if len(request.orders) > limit:
        raise invalid([ErrorDetail("orders", f"must hold at most {limit} orders (BATCH_MAX_ORDERS), "
                                             f"not {len(request.orders)}")])
    if idempotency_header is not None:
        raise invalid([ErrorDetail("Idempotency-Key", "is not taken on a batch: give each order its "
                                                      "idempotency_key")])
    return request.orders


async def _place(ctx: IngestContext, principal: Principal, raw_orders: list[msgspec.Raw], session: str) -> bytes:
    """Check every order, enqueue the valid ones with one accept.lua call per instrument, and encode the
    results in the orders' order."""
    results: list[bytes] = [b""] * len(raw_orders)
    by_symbol: dict[str, list[tuple[int, Placement]]] = {}
    created_ms = time.time_ns() // 1_000_000
    order_limit = ctx.settings.max_body_bytes
    for index, raw in enumerate(raw_orders):
        try:
            if len(raw) > order_limit:  # what POST /orders would answer for this order alone
                raise too_large(order_limit)
            order = checked_order(ctx, principal, bytes(raw), None)
        except ApiError as err:
            results[index] = _refused(ctx, err, None)
            continue
        by_symbol.setdefault(order.instrument.symbol, []).append((index, placement_of(order, created_ms, session)))

    calls = [_accept(ctx, principal, symbol, placed) for symbol, placed in by_symbol.items()]
    # Each instrument's call is one command of the same pipeline (the batcher sends what one tick queued).
    answered = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
    for placed, outcomes in zip(by_symbol.values(), answered, strict=True):
        for (index, placement), outcome in zip(placed, outcomes, strict=True):
            if isinstance(outcome, ApiError):
                results[index] = _refused(ctx, outcome, placement.order.client_id)
                continue
            try:
                status, answer, _ = settle(ctx, placement, outcome)
            except ApiError as err:
                results[index] = _refused(ctx, err, placement.order.client_id)
                continue
            results[index] = b'{"status":%d,"order":%s}' % (status, answer)
    return b'{"results":[' + b",".join(results) + b"]}"


async def _accept(ctx: IngestContext, principal: Principal, symbol: str, placed: list[tuple[int, Placement]]
                  ) -> Sequence[Outcome | ApiError]:
    """One accept.lua call for `symbol`'s orders; when Redis cannot answer, each order's 503."""
    try:
        return await accept_orders(ctx.batcher, ctx.keys[symbol], [p for _, p in placed],
                                   limits_of(ctx, principal, symbol))
    except (RedisError, OSError, BatcherClosed) as exc:
        return [redis_unavailable(exc)] * len(placed)


def _refused(ctx: IngestContext, err: ApiError, client_id: str | None) -> bytes:
    ctx.metrics.orders_rejected.labels(err.reason).inc()
    ctx.metrics.refused(err.reason)
    log_order(ctx, "rejected", client_id, reason=err.reason)
    retry: int | msgspec.UnsetType = msgspec.UNSET
    if err.status in _RETRY_STATUSES and err.headers is not None:
        retry = int(err.headers["Retry-After"])
    return _encode(BatchRefusal(err.status, BatchError(err.code, err.message, err.details, retry)))
