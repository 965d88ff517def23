"""POST /orders: the checks in the contract's order (413, 401, 400, 422, 403, 429, idempotency, 503)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from prometheus_client import Histogram
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import Response

from services.common.auth import Principal
from services.common.ids import new_order_id
from services.common.redis_batch import BatcherClosed
from services.ingest.accept import (
    Accepted,
    ClientHalted,
    Conflict,
    DuplicateClientOrderId,
    InstrumentHalted,
    Limits,
    Outcome,
    Overloaded,
    Placement,
    RateLimited,
    Replayed,
    Reply,
    accept_order,
    accepted_record,
)
from services.ingest.context import IngestContext
from services.ingest.errors import (
    ApiError,
    ErrorDetail,
    RawHeaders,
    RawJsonResponse,
    client_halted,
    forbidden,
    instrument_halted,
    unavailable,
)
from services.ingest.handling import redis_unavailable
from services.ingest.validation import (
    IDEMPOTENCY_HEADER,
    ValidOrder,
    decode_order,
    resolve_idempotency_key,
    validate_order,
)
from services.ingest.views import encode_view, render

logger = logging.getLogger(__name__)


class _AnswerId(msgspec.Struct):
    order_id: str


_decode_answer_id = msgspec.json.Decoder(_AnswerId).decode


def log_order(ctx: IngestContext, event: str, client_id: str | None, order_id: str | None = None,
         instrument: str | None = None, reason: str | None = None) -> None:
    # Counted for the periodic `activity` line; a line of its own per order only with LOG_ORDERS=1
    # (the order is on the streams and in PostgreSQL: a line each would cost the hot path ~20%).
    ctx.activity.count(event, reason=reason)
    if ctx.settings.log_orders and logger.isEnabledFor(logging.INFO):
        logger.info("order %s", event, extra={
            "event": event, "order_id": order_id, "client_id": client_id, "instrument": instrument,
            "reason": reason,
        })


# POST /orders's and POST /orders/batch's answer past their 413 and 401 (place_order, place_batch.place_batch).
Place = Callable[[IngestContext, Principal, bytes, str | None], Awaitable[Response]]


async def answer_timed(ctx: IngestContext, headers: Headers, body: Callable[[], Awaitable[bytes]], place: Place,
                       latency: Histogram) -> Response:
    """Answer one POST of orders with `place` past its 413 and 401, and record its latency in `latency`."""
    started = time.perf_counter()
    try:
        raw = await body()  # first: 413 comes before 401
        principal = ctx.authenticate(headers)
    except ApiError as err:
        response = refusal(ctx, err, None)
    else:
        response = await place(ctx, principal, raw, headers.get(IDEMPOTENCY_HEADER))
    latency.observe(time.perf_counter() - started)
    return response


async def answer_order(ctx: IngestContext, headers: Headers, body: Callable[[], Awaitable[bytes]]) -> Response:
    """Answer one POST /orders and record its latency and outcome."""
    return await answer_timed(ctx, headers, body, place_order, ctx.metrics.order_latency)


async def place_order(ctx: IngestContext, principal: Principal, body: bytes, idempotency_header: str | None,
                      session: str = "") -> Response:
    """POST /orders's answer past its 413 and 401 (the order-entry socket's `place` too): 400, 422, 403, then
    accept.lua's outcome; every refusal counted and logged. `session`: the cancel-on-disconnect session the
    order is placed through ("" none)."""
    client_id: str | None = None
    try:
        order = checked_order(ctx, principal, body, idempotency_header)
        client_id = order.client_id
        return await _enqueue(ctx, order, principal, session)
    except ApiError as err:
        return refusal(ctx, err, client_id)
    except (RedisError, OSError, BatcherClosed) as exc:
        return refusal(ctx, redis_unavailable(exc), client_id)


def refusal(ctx: IngestContext, err: ApiError, client_id: str | None) -> Response:
    """`err`'s answer, counted (orders_rejected_total) and logged as a rejected order."""
    ctx.metrics.orders_rejected.labels(err.reason).inc()
    ctx.metrics.refused(err.reason)
    log_order(ctx, "rejected", client_id, reason=err.reason)
    return err.response()


def checked_order(ctx: IngestContext, principal: Principal, body: bytes, idempotency_header: str | None
                  ) -> ValidOrder:
    """One order's body checked as POST /orders checks it after 413 and 401: ApiError 400, 422 or 403."""
    decoded = decode_order(body)
    key = resolve_idempotency_key(decoded, idempotency_header)
    order = validate_order(decoded, ctx.instruments, key)
    if not principal.may_act_for(order.client_id):
        raise forbidden(f"this key acts for {principal.client_id!r} only, not {order.client_id!r}")
    return order


def _with_rate_limit(ctx: IngestContext, reply: Reply, headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus the client bucket's RateLimit-* (IETF draft names), from accept.lua's reply."""
    if ctx.rate_limit_limit is not None:
        headers["RateLimit-Limit"] = ctx.rate_limit_limit
        headers["RateLimit-Remaining"] = str(reply.remaining)
        headers["RateLimit-Reset"] = str(-(-reply.reset_ms // 1000))  # whole seconds until full, rounded up
    return headers


def _raw_with_rate_limit(ctx: IngestContext, reply: Reply, headers: RawHeaders) -> RawHeaders:
    """_with_rate_limit for the headers of a 201 or a replay, already as RawJsonResponse takes them."""
    if ctx.rate_limit_limit is not None:
        headers.append((b"ratelimit-limit", ctx.rate_limit_limit.encode()))
        headers.append((b"ratelimit-remaining", b"%d" % reply.remaining))
        headers.append((b"ratelimit-reset", b"%d" % -(-reply.reset_ms // 1000)))
    return headers


def placement_of(order: ValidOrder, created_ms: int, session: str = "") -> Placement:
    """The order with a new order id, as stored and enqueued, and its 201 body."""
    record = accepted_record(order, new_order_id(created_ms), created_ms, session=session)
    return Placement(order, record, encode_view(render(record, order.instrument)))


def limits_of(ctx: IngestContext, principal: Principal, symbol: str) -> Limits:
    """The buckets, backpressure and TTL every order `principal` places on `symbol` now is held to."""
    settings = ctx.settings
    return Limits(
        rate_per_sec=settings.rate_limit_per_sec, burst=settings.rate_limit_burst, key_id=principal.key_id,
        key_rate_per_sec=settings.api_key_rate_limit_per_sec, key_burst=settings.api_key_rate_limit_burst,
        overloaded=ctx.lag.overloaded(symbol), idempotency_ttl_s=settings.idempotency_ttl_s,
    )


async def _enqueue(ctx: IngestContext, order: ValidOrder, principal: Principal, session: str) -> Response:
    symbol = order.instrument.symbol
    placement = placement_of(order, time.time_ns() // 1_000_000, session)
    outcome = await accept_order(ctx.batcher, ctx.keys[symbol], placement, limits_of(ctx, principal, symbol))
    status, body, headers = settle(ctx, placement, outcome)
    return RawJsonResponse(body, status, headers)


def settle(ctx: IngestContext, placement: Placement, outcome: Outcome) -> tuple[int, bytes, RawHeaders]:
    """accept.lua's outcome for one order as POST /orders answers it: (status, body, headers) of a 201 or a
    200 replay, counted and logged; ApiError for every refusal (counted by the caller)."""
    order = placement.order
    symbol = order.instrument.symbol
    if isinstance(outcome, Accepted):
        order_id = placement.record.order_id
        ctx.metrics.orders_received.labels(symbol).inc()
        log_order(ctx, "accepted", order.client_id, order_id, symbol)
        location = b"/orders/" + order_id.encode()
        return 201, placement.answer, _raw_with_rate_limit(ctx, outcome, [(b"location", location)])
    if isinstance(outcome, Replayed):
        ctx.metrics.idempotent_replays.inc()
        first_id = _decode_answer_id(outcome.answer).order_id
        log_order(ctx, "replayed", order.client_id, first_id, symbol)
        return 200, outcome.answer, _raw_with_rate_limit(
            ctx, outcome, [(b"idempotent-replayed", b"true"), (b"location", b"/orders/" + first_id.encode())])
    if isinstance(outcome, Conflict):
        raise ApiError(409, "idempotency_conflict",
                       f"idempotency key {order.idempotency_key!r} was used with a different body",
                       headers=_with_rate_limit(ctx, outcome, {}), reason="conflict")
    if isinstance(outcome, DuplicateClientOrderId):
        raise ApiError(409, "duplicate_client_order_id",
                       f"client_order_id {order.client_order_id!r} already names order {outcome.order_id}",
                       details=[ErrorDetail("client_order_id", "already used by this client")],
                       headers=_with_rate_limit(ctx, outcome, {}), reason="duplicate_client_order_id")
    if isinstance(outcome, ClientHalted):
        raise client_halted(order.client_id, headers=_with_rate_limit(ctx, outcome, {}))
    if isinstance(outcome, InstrumentHalted):
        raise instrument_halted(symbol, headers=_with_rate_limit(ctx, outcome, {}))
    if isinstance(outcome, RateLimited):
        ctx.metrics.rate_limited.inc()
        retry_s = max(1, -(-outcome.retry_after_ms // 1000))
        over = "this API key is" if outcome.by_key else f"client {order.client_id!r} is"
        raise ApiError(429, "rate_limited", f"{over} over its rate limit",
                       headers=_with_rate_limit(ctx, outcome, {"Retry-After": str(retry_s)}),
                       reason="key_rate_limited" if outcome.by_key else "rate_limited")
    assert isinstance(outcome, Overloaded)
    raise unavailable(f"the {symbol} matcher is behind, retry shortly", reason="overloaded",
                      headers=_with_rate_limit(ctx, outcome, {}))
