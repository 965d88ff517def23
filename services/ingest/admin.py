"""Admin endpoints (admin role): order-book snapshots on demand and the latest stored one."""

from __future__ import annotations

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from services.common.instruments import Instrument
from services.common.snapshots import SnapshotInfo, latest_snapshot, take_snapshot
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, forbidden, invalid, json_response, not_found
from services.ingest.pg_reads import database_unavailable


class SnapshotsTaken(msgspec.Struct, frozen=True):
    """201 of POST /admin/snapshots: one stored snapshot per instrument asked for."""

    snapshots: list[SnapshotInfo]


def _require_admin(ctx: IngestContext, request: Request) -> None:
    if ctx.authenticate(request).role != "admin":
        raise forbidden("this endpoint needs an admin key")


def _instruments(ctx: IngestContext, request: Request) -> list[Instrument]:
    symbol = request.query_params.get("instrument")
    if symbol is None:
        return list(ctx.instruments.values())
    if symbol not in ctx.instruments:
        raise invalid([ErrorDetail("instrument", f"unknown instrument {symbol[:64]!r}")])
    return [ctx.instruments[symbol]]


async def post_snapshots(ctx: IngestContext, request: Request) -> Response:
    """POST /admin/snapshots[?instrument=]: store each instrument's book now; 201 with the stored ids."""
    _require_admin(ctx, request)
    taken = []
    try:
        for instrument in _instruments(ctx, request):
            taken.append(await take_snapshot(ctx.redis, ctx.db, instrument, ctx.keys[instrument.symbol]))
    except (SQLAlchemyError, OSError) as exc:
        raise database_unavailable(exc) from exc
    return json_response(SnapshotsTaken(taken), 201)


async def get_latest_snapshot(ctx: IngestContext, request: Request) -> Response:
    """GET /admin/snapshots/latest?instrument=BTC-USD (default: the first configured instrument)."""
    _require_admin(ctx, request)
    instrument = _instruments(ctx, request)[0]
    try:
        snapshot = await latest_snapshot(ctx.db, instrument.symbol)
    except (SQLAlchemyError, OSError) as exc:
        raise database_unavailable(exc) from exc
    if snapshot is None:
        raise not_found(f"no snapshot of {instrument.symbol} yet")
    return json_response(snapshot)
