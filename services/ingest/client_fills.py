"""GET /clients/{client_id}/fills?instrument=&limit=&end=: the client's side of each of its trades, newest first,
from PostgreSQL (the trades table names both orders and both clients, and the taker's side)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

import msgspec
from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from services.common.instruments import Instruments
from services.common.money import plain
from services.common.times import iso
from services.ingest.analytics_routes import time_param
from services.ingest.clients import client_of, instrument_param
from services.ingest.context import IngestContext
from services.ingest.errors import json_response
from services.ingest.pg_reads import stored_price
from services.ingest.trades import limit_param

DEFAULT_LIMIT = 100


class FillView(msgspec.Struct, frozen=True):
    """One fill of a client: its order's side of a trade. A self-trade is two fills, one per side."""

    trade_id: str
    order_id: str
    instrument: str
    side: Literal["buy", "sell"]
    liquidity: Literal["maker", "taker"]
    price: str
    quantity: str
    executed_at: str


def _side_query(side: str, filters: str) -> str:
    """The client's fills on one side, newest first, at most :limit (each side reads its own client index)."""
    client, order = ("buyer_client_id", "buy_order_id") if side == "buy" else ("seller_client_id", "sell_order_id")
    return (f"(SELECT trade_id, instrument, seq, price, quantity, executed_at, {order} AS order_id, "
            f"'{side}' AS side, CASE WHEN taker_side = '{side}' THEN 'taker' ELSE 'maker' END AS liquidity "
            f"FROM trades WHERE {client} = :client_id{filters} "
            f"ORDER BY executed_at DESC, instrument, seq DESC LIMIT :limit)")


def _fills_query(by_instrument: bool, until: bool) -> str:
    filters = (" AND instrument = :instrument" if by_instrument else "") + (" AND executed_at < :end" if until else "")
    return (f"SELECT * FROM ({_side_query('buy', filters)} UNION ALL {_side_query('sell', filters)}) AS fills "
            f"ORDER BY executed_at DESC, instrument, seq DESC, side LIMIT :limit")


# Every combination of the optional filters, each one statement (one plan each).
_QUERIES = {(i, e): text(_fills_query(i, e)) for i in (False, True) for e in (False, True)}


async def client_fills(conn: AsyncConnection, client_id: str, symbol: str | None, end: dt.datetime | None,
                       limit: int) -> Sequence[RowMapping]:
    """The client's newest `limit` fills before `end` (all when None), of one instrument or all."""
    params: dict[str, object] = {"client_id": client_id, "limit": limit}
    if symbol is not None:
        params["instrument"] = symbol
    if end is not None:
        params["end"] = end
    query = _QUERIES[(symbol is not None, end is not None)]
    return (await conn.execute(query, params)).mappings().all()


def _view(row: RowMapping, instruments: Instruments) -> FillView:
    return FillView(
        trade_id=row["trade_id"], order_id=row["order_id"], instrument=row["instrument"], side=row["side"],
        liquidity=row["liquidity"], price=stored_price(instruments.get(row["instrument"]), row["price"]),
        quantity=plain(row["quantity"]), executed_at=iso(row["executed_at"]))


async def get_client_fills(ctx: IngestContext, request: Request) -> Response:
    """A trader reads its own client only; broker and admin keys any client."""
    _, client_id = client_of(ctx, request, "fills")
    symbol = instrument_param(ctx, request)
    limit = limit_param(request.query_params.get("limit"), DEFAULT_LIMIT)
    end = time_param(request, "end")
    rows = await ctx.public_reads.run(lambda conn: client_fills(conn, client_id, symbol, end, limit))
    return json_response([_view(row, ctx.instruments) for row in rows])
