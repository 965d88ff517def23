"""The kill switches (issue 16; contract, "Risk controls"), admin key only:

- POST /admin/clients/{client_id}/halt `{"cancel_open": false}` and DELETE: the client's new orders and amends
  are refused (403 client_halted) on every instrument; with `cancel_open` its resting orders are cancelled
  (a cancel_all with reason `halted` per instrument, as POST /orders/cancel-all enqueues and waits for it);
- POST / DELETE /admin/instruments/{symbol}/halt: the instrument's new orders and amends are refused (409
  instrument_halted).

A halt is written to PostgreSQL first (services/common/halts.py), then to every instrument's halts:{I} hash, which
accept.lua and amend.lua check in the call that would accept: once the answer is sent, no order of the halted
client or instrument can be accepted. A lift removes it from PostgreSQL, then from Redis. Repeats are harmless.
The gauges are counted from Redis at each scrape (halt_gauges), so every ingest process reports the same.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from services.common.auth import Principal
from services.common.halts import HaltScope, now_ms, remove_halt, store_halt
from services.common.keys import HALT_CLIENT, HALT_INSTRUMENT, halt_of_client
from services.ingest.cancel_all import enqueue_and_wait
from services.ingest.context import IngestContext
from services.ingest.errors import forbidden, json_response, not_found
from services.ingest.handling import read_body
from services.ingest.pg_reads import database_unavailable
from services.ingest.validation import ID_TEXT, decode_object

logger = logging.getLogger(__name__)


class ClientHaltRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /admin/clients/{client_id}/halt: also cancel the client's resting orders (reason `halted`)."""

    cancel_open: bool = False


class ClientHalted(msgspec.Struct, frozen=True):
    """200: the client is halted; the orders cancelled with cancel_open."""

    client_id: str
    halted: bool
    cancelled: list[str]


class ClientHaltPending(msgspec.Struct, frozen=True):
    """202: the client is halted, but past CANCEL_WAIT_MS some instruments had not applied cancel_open yet."""

    client_id: str
    halted: bool
    cancelled: list[str]
    pending_instruments: list[str]


class ClientResumed(msgspec.Struct, frozen=True):
    """200 of DELETE /admin/clients/{client_id}/halt."""

    client_id: str
    halted: bool


class InstrumentHalt(msgspec.Struct, frozen=True):
    """200 of POST / DELETE /admin/instruments/{symbol}/halt."""

    instrument: str
    halted: bool


_decoder = msgspec.json.Decoder(ClientHaltRequest)


def _admin(ctx: IngestContext, request: Request) -> Principal:
    principal = ctx.authenticate(request)
    if principal.role != "admin":
        raise forbidden("halts need an admin key")
    return principal


def _client_id(request: Request) -> str:
    client_id = str(request.path_params.get("client_id", ""))
    if not ID_TEXT.match(client_id):
        raise not_found(f"no client {client_id[:80]!r}")
    return client_id


def _symbol(ctx: IngestContext, request: Request) -> str:
    symbol = str(request.path_params.get("symbol", ""))
    if symbol not in ctx.instruments:
        raise not_found(f"no instrument {symbol[:64]!r}")
    return symbol


async def _persist(ctx: IngestContext, scope: HaltScope, target: str, by: str, at_ms: int | None) -> None:
    """Store (at_ms given) or remove the halt in PostgreSQL: 503 when the database does not answer."""
    try:
        if at_ms is None:
            await remove_halt(ctx.db, scope, target)
        else:
            await store_halt(ctx.db, scope, target, by, at_ms)
    except (SQLAlchemyError, OSError) as exc:
        raise database_unavailable(exc) from exc


def _logged(ctx: IngestContext, scope: HaltScope, target: str, principal: Principal, halted: bool,
            **extra: object) -> None:
    action = "halt" if halted else "resume"
    ctx.metrics.halt_changes.labels(scope, action).inc()
    logger.info("%s %s %s by %s", scope, target, "halted" if halted else "resumed", principal.label, extra={
        "event": action, "scope": scope, scope if scope == "client" else "instrument": target,
        "by": principal.label, **extra})


async def post_client_halt(ctx: IngestContext, request: Request) -> Response:
    """Checks in the order 413, 401, 400, 422 (an empty body is `{}`), 403 (not admin), 404 (not a client id);
    503 without PostgreSQL."""
    body = await read_body(request, ctx.settings.max_body_bytes)
    ctx.authenticate(request)  # 401 before the body's own checks
    cancel_open = decode_object(_decoder, body).cancel_open if body.strip() else False
    principal = _admin(ctx, request)
    client_id = _client_id(request)
    at_ms = now_ms()
    await _persist(ctx, "client", client_id, principal.label, at_ms)
    field = halt_of_client(client_id)
    # Every instrument's hash before the answer (and before cancel_open's commands): from here on, accept.lua
    # refuses the client's orders on each of them.
    await asyncio.gather(*(ctx.batcher.execute("HSETNX", k.halts, field, at_ms) for k in ctx.keys.values()))
    _logged(ctx, "client", client_id, principal, True, cancel_open=cancel_open)
    if not cancel_open:
        return json_response(ClientHalted(client_id, True, []))
    cancelled, pending = await enqueue_and_wait(ctx, client_id, list(ctx.instruments), "", "halted",
                                                principal.label)
    if pending:
        return json_response(ClientHaltPending(client_id, True, cancelled, pending), 202)
    return json_response(ClientHalted(client_id, True, cancelled))


async def delete_client_halt(ctx: IngestContext, request: Request) -> Response:
    """Lift a client's halt: 401, 403 (not admin), 404 (not a client id); 503 without PostgreSQL."""
    principal = _admin(ctx, request)
    client_id = _client_id(request)
    await _persist(ctx, "client", client_id, principal.label, None)
    field = halt_of_client(client_id)
    await asyncio.gather(*(ctx.batcher.execute("HDEL", k.halts, field) for k in ctx.keys.values()))
    _logged(ctx, "client", client_id, principal, False)
    return json_response(ClientResumed(client_id, False))


async def client_halt(ctx: IngestContext, request: Request) -> Response:
    """/admin/clients/{client_id}/halt: POST halts, DELETE lifts (one route, so a 405 lists both in Allow)."""
    if request.method == "POST":
        return await post_client_halt(ctx, request)
    return await delete_client_halt(ctx, request)


async def instrument_halt(ctx: IngestContext, request: Request) -> Response:
    """POST (halt) or DELETE (lift) /admin/instruments/{symbol}/halt: 401, 403 (not admin), 404 (unknown symbol);
    503 without PostgreSQL."""
    principal = _admin(ctx, request)
    symbol = _symbol(ctx, request)
    halted = request.method == "POST"
    at_ms = now_ms() if halted else None
    await _persist(ctx, "instrument", symbol, principal.label, at_ms)
    halts = ctx.keys[symbol].halts
    if at_ms is not None:
        await ctx.batcher.execute("HSETNX", halts, HALT_INSTRUMENT, at_ms)
    else:
        await ctx.batcher.execute("HDEL", halts, HALT_INSTRUMENT)
    _logged(ctx, "instrument", symbol, principal, halted)
    return json_response(InstrumentHalt(symbol, halted))


async def halt_gauges(ctx: IngestContext) -> None:
    """Set halted_clients and halted_instruments from every instrument's halts hash (at each scrape)."""
    fields = await asyncio.gather(*(ctx.batcher.execute("HKEYS", k.halts) for k in ctx.keys.values()))
    instruments = 0
    clients: set[bytes] = set()
    for names in fields:
        for name in names:
            if name == _INSTRUMENT_FIELD:
                instruments += 1
            elif name.startswith(_CLIENT_FIELD):
                clients.add(name)
    ctx.metrics.halted_instruments.set(instruments)
    ctx.metrics.halted_clients.set(len(clients))


_INSTRUMENT_FIELD = HALT_INSTRUMENT.encode()
_CLIENT_FIELD = HALT_CLIENT.encode()
