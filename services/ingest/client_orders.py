"""GET /clients/{client_id}/orders?instrument=&limit=: the client's live orders (accepted, open,
partially_filled), oldest first, as GET /orders/{id} views.

Read from the live book: each instrument's client index co:{I}:<len>:<client> (a zset of the client's live
order ids scored by created_at, kept by accept.lua and match.lua in the same calls that change the orders),
then the records of those ids. An order that went final between the two reads is left out.
"""

from __future__ import annotations

import asyncio
import heapq

from starlette.requests import Request
from starlette.responses import Response

from services.common.wire import FINAL_STATUSES, decode_record
from services.ingest.clients import client_of, instrument_param
from services.ingest.context import IngestContext
from services.ingest.errors import json_response
from services.ingest.trades import limit_param
from services.ingest.views import OrderView, render

DEFAULT_LIMIT = 100


async def get_client_orders(ctx: IngestContext, request: Request) -> Response:
    """A trader reads its own client only; broker and admin keys any client."""
    _, client_id = client_of(ctx, request, "orders")
    symbol = instrument_param(ctx, request)
    limit = limit_param(request.query_params.get("limit"), DEFAULT_LIMIT)
    return json_response(await live_orders(ctx, client_id, symbol, limit))


async def live_orders(ctx: IngestContext, client_id: str, symbol: str | None, limit: int) -> list[OrderView]:
    """The client's oldest `limit` live orders, of one instrument or all, oldest first."""
    symbols = [symbol] if symbol is not None else list(ctx.instruments)
    # Each instrument's oldest `limit` ids, then their records: two pipelined rounds over the instruments.
    ids = await asyncio.gather(*(
        ctx.batcher.execute("ZRANGE", ctx.keys[s].client_orders(client_id), 0, limit - 1) for s in symbols))
    wanted = [(s, found) for s, found in zip(symbols, ids, strict=True) if found]
    packed = await asyncio.gather(*(ctx.batcher.execute("HMGET", ctx.keys[s].order_state, *found)
                                    for s, found in wanted))
    per_instrument = []
    for (s, _), records in zip(wanted, packed, strict=True):
        instrument = ctx.instruments[s]
        live = [decode_record(p) for p in records if p is not None]
        per_instrument.append([(r.created_at, r.order_id, render(r, instrument)) for r in live
                               if r.status not in FINAL_STATUSES])
    merged = heapq.merge(*per_instrument, key=lambda item: (item[0], item[1]))
    return [view for _, _, view in list(merged)[:limit]]
