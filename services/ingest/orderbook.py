"""GET /orderbook?instrument=BTC-USD&levels=20: public, read atomically with book.lua."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from services.common.book import MAX_LEVELS, parse_book
from services.common.scripts import BOOK_SCRIPT, BookArgv, BookKeys, astuple
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, invalid, json_response

DEFAULT_LEVELS = 20
_DIGITS = re.compile(r"^[0-9]{1,5}$")


def _levels(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LEVELS
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_LEVELS:
        raise invalid([ErrorDetail("levels", f"must be an integer from 1 to {MAX_LEVELS}")])
    return int(raw)


async def get_orderbook(ctx: IngestContext, request: Request) -> Response:
    symbol = request.query_params.get("instrument")
    instrument = ctx.instruments.get(symbol) if symbol is not None else None
    if instrument is None:
        message = "is required" if symbol is None else f"unknown instrument {symbol[:64]!r}"
        raise invalid([ErrorDetail("instrument", message)])
    levels = _levels(request.query_params.get("levels"))
    keys = astuple(BookKeys.of(ctx.keys[instrument.symbol]))
    reply = await ctx.batcher.evalsha(BOOK_SCRIPT, keys, astuple(BookArgv(levels=str(levels))))
    return json_response(parse_book(instrument, reply))
