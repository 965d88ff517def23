"""POST /orders/cancel-all: cancel every resting order of a client, optionally of one instrument and side.

One `cancel_all` command per instrument concerned (each applied atomically by its matcher, in stream order: it
cancels what rests then, including orders accepted before it); the outcomes (res:{I}:<request_id>, the ids
cancelled) are polled for up to CANCEL_WAIT_MS together: 200 once every instrument answered, else 202 with the
instruments still pending. `cancel_all` is the same answer as (status, body) for the order-entry socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.common.auth import Principal
from services.common.keys import InstrumentKeys
from services.common.wire import (
    CancelAllCommand,
    CancelAllReason,
    CancelAllSide,
    Side,
    command_fields,
    decode_cancel_all_outcome,
)
from services.ingest.answers import Answer, answered
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, forbidden, invalid, raw_json_response
from services.ingest.handling import read_body
from services.ingest.validation import ClientId, Symbol, decode_object

logger = logging.getLogger(__name__)


class CancelAllRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The POST /orders/cancel-all body: whose orders, and optionally only one instrument's or one side's."""

    client_id: ClientId
    instrument: Symbol | None = None
    side: Side | None = None


class CancelAllDone(msgspec.Struct, frozen=True):
    """200: every instrument concerned applied it; the ids it cancelled."""

    cancelled: list[str]


class CancelAllPending(msgspec.Struct, frozen=True):
    """202: past CANCEL_WAIT_MS some instruments had not applied it yet; what the others cancelled."""

    cancelled: list[str]
    pending_instruments: list[str]


_decoder = msgspec.json.Decoder(CancelAllRequest)
_encode = msgspec.json.Encoder().encode


def decode_cancel_all(body: bytes) -> CancelAllRequest:
    """A body as CancelAllRequest: ApiError 400 when it is not a JSON object, 422 naming a bad field."""
    return decode_object(_decoder, body)


async def post_cancel_all(ctx: IngestContext, request: Request) -> Response:
    """POST /orders/cancel-all: checks in the order 413, 401, 400, 422, 403."""
    body = await read_body(request, ctx.settings.max_body_bytes)
    principal = ctx.authenticate(request)
    status, content = await cancel_all_orders(ctx, principal, decode_cancel_all(body))
    return raw_json_response(content, status)


async def cancel_all(ctx: IngestContext, principal: Principal, request: CancelAllRequest) -> Answer:
    """POST /orders/cancel-all's (status, body) past its 413, 401, 400 (the order-entry socket's `cancel_all`):
    every refusal as its error body, never an exception."""
    return await answered(cancel_all_orders(ctx, principal, request))


async def cancel_all_orders(ctx: IngestContext, principal: Principal, request: CancelAllRequest) -> Answer:
    """Enqueue one cancel_all per instrument concerned and wait for their outcomes; ApiError 422 (an unknown
    instrument) and 403 (a trader naming another client)."""
    if request.instrument is not None and request.instrument not in ctx.instruments:
        raise invalid([ErrorDetail("instrument", f"unknown instrument {request.instrument[:64]!r}")])
    if not principal.may_act_for(request.client_id):
        raise forbidden(f"this key acts for {principal.client_id!r} only, not {request.client_id!r}")
    symbols = [request.instrument] if request.instrument is not None else list(ctx.instruments)
    cancelled, pending = await enqueue_and_wait(ctx, request.client_id, symbols, request.side or "", "user",
                                                principal.label)
    if pending:
        return 202, _encode(CancelAllPending(cancelled, pending))
    return 200, _encode(CancelAllDone(cancelled))


async def enqueue_and_wait(ctx: IngestContext, client_id: str, symbols: list[str], side: CancelAllSide,
                           reason: CancelAllReason, requester: str) -> tuple[list[str], list[str]]:
    """Enqueue one cancel_all of `client_id` per instrument of `symbols` and wait up to CANCEL_WAIT_MS for the
    matchers' outcomes: (the ids cancelled, the instruments that did not answer in time). Also the admin
    halt's `cancel_open` (reason `halted`)."""
    ts = str(time.time_ns() // 1_000_000)
    requests = {symbol: uuid.uuid4().hex for symbol in symbols}
    # One XADD per instrument, in one pipeline: each is one instrument's slot.
    await asyncio.gather(*(
        ctx.batcher.execute("XADD", ctx.keys[symbol].orders, "*", *command_fields(CancelAllCommand(
            client_id=client_id, side=side, reason=reason, request_id=requests[symbol],
            requester=requester, ts=ts)))
        for symbol in symbols))
    ctx.activity.count("cancel_all_requested")
    if ctx.settings.log_orders:
        logger.info("cancel-all requested for client %s by %s", client_id, requester,
                    extra={"event": "cancel_all_requested", "client_id": client_id,
                           "instruments": symbols, "side": side, "reason": reason})

    deadline = time.monotonic() + ctx.settings.cancel_wait_ms / 1000
    outcomes = await asyncio.gather(*(_outcome(ctx, ctx.keys[s], requests[s], deadline) for s in symbols))
    cancelled = [order_id for outcome in outcomes if outcome is not None for order_id in outcome]
    pending = [symbol for symbol, outcome in zip(symbols, outcomes, strict=True) if outcome is None]
    return cancelled, pending


async def _outcome(ctx: IngestContext, keys: InstrumentKeys, request_id: str, deadline: float) -> list[str] | None:
    stored = await ctx.store.wait_result(keys.result(request_id), deadline)
    return None if stored is None else decode_cancel_all_outcome(stored).cancelled
