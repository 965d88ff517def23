"""GET /clients/{client_id}/positions?as_of=: a client's net positions from its trades before as_of."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.analytics.positions import client_positions, net_by_asset
from services.analytics.stats import Sides
from services.analytics.time_buckets import now_ms
from services.common.instruments import Instrument
from services.common.money import plain
from services.common.times import iso
from services.ingest.analytics_routes import time_param, vwap_text
from services.ingest.clients import client_of
from services.ingest.context import IngestContext
from services.ingest.errors import json_response


class SideView(msgspec.Struct, frozen=True):
    quantity: str
    quote: str
    vwap: str | None


class InstrumentPositionView(msgspec.Struct, frozen=True):
    bought: SideView
    sold: SideView
    trade_count: int


class PositionsView(msgspec.Struct, frozen=True):
    client_id: str
    as_of: str
    net: dict[str, str]
    instruments: dict[str, InstrumentPositionView]


def _side(instrument: Instrument | None, quantity: Decimal, quote: Decimal) -> SideView:
    vwap = vwap_text(instrument, quantity, quote) if instrument is not None else None
    return SideView(quantity=plain(quantity), quote=plain(quote), vwap=vwap)


def _instrument_view(instrument: Instrument | None, s: Sides) -> InstrumentPositionView:
    return InstrumentPositionView(bought=_side(instrument, s.bought_quantity, s.bought_quote),
                                  sold=_side(instrument, s.sold_quantity, s.sold_quote), trade_count=s.trade_count)


async def get_positions(ctx: IngestContext, request: Request) -> Response:
    """Traders read their own client only; broker and admin keys any client."""
    _, client_id = client_of(ctx, request, "positions")
    as_of = time_param(request, "as_of") or now_ms()
    sides = await ctx.public_reads.run(lambda conn: client_positions(conn, client_id, as_of))
    return json_response(PositionsView(
        client_id=client_id, as_of=iso(as_of),
        net={asset: plain(value) for asset, value in net_by_asset(sides, ctx.instruments).items()},
        instruments={symbol: _instrument_view(ctx.instruments.get(symbol), s) for symbol, s in sides.items()}))
