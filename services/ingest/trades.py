"""GET /trades?instrument=BTC-USD&limit=50: public, newest first, from PostgreSQL."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, invalid, json_response
from services.ingest.pg_reads import recent_trades

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_DIGITS = re.compile(r"^[0-9]{1,5}$")


def limit_param(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    """A `limit` query parameter, 1 to MAX_LIMIT; 422 naming it otherwise."""
    if raw is None:
        return default
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid([ErrorDetail("limit", f"must be an integer from 1 to {MAX_LIMIT}")])
    return int(raw)


async def get_trades(ctx: IngestContext, request: Request) -> Response:
    symbol = request.query_params.get("instrument")
    if symbol is not None and symbol not in ctx.instruments:
        raise invalid([ErrorDetail("instrument", f"unknown instrument {symbol[:64]!r}")])
    limit = limit_param(request.query_params.get("limit"))
    return json_response(await recent_trades(ctx.public_reads, ctx.instruments, symbol, limit))
