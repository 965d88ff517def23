"""GET /analytics/{instrument}/ticker and /candles: public market statistics from PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.analytics import market
from services.analytics.stats import Candle
from services.analytics.time_buckets import DAY, HOUR, MINUTE, ceil_to, now_ms, parse_time
from services.common.instruments import Instrument
from services.common.money import EXACT, fixed, plain
from services.common.times import iso
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, invalid, json_response

INTERVALS = {"1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "1h": HOUR, "1d": DAY}
DEFAULT_INTERVAL = "1m"
MAX_BUCKETS = 1500
TICKER_WINDOW = DAY


class TickerView(msgspec.Struct, frozen=True):
    instrument: str
    from_: str = msgspec.field(name="from")
    to: str = ""
    open: str | None = None
    high: str | None = None
    low: str | None = None
    last: str | None = None
    volume: str = "0"
    quote_volume: str = "0"
    vwap: str | None = None
    trade_count: int = 0


class CandleView(msgspec.Struct, frozen=True):
    start: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    vwap: str
    trade_count: int


def instrument_price(instrument: Instrument, value: Decimal) -> str:
    """A stored price (a whole number of ticks) with exactly the tick's decimals."""
    return fixed(value, instrument.tick_places)


def price_text(instrument: Instrument, value: Decimal | None) -> str | None:
    return None if value is None else instrument_price(instrument, value)


def vwap_text(instrument: Instrument, quantity: Decimal, quote: Decimal) -> str | None:
    """quote / quantity rounded half-even to the tick; None without any quantity."""
    if quantity == 0:
        return None
    # quote / (quantity x tick) is notional / lots of Instrument.average_price_text, without the checks
    # that each is a whole number of increments (stored trades are): a 1,440-candle answer renders 3x faster.
    ticks = EXACT.divide(quote, EXACT.multiply(quantity, instrument.tick))
    return instrument.price_text(int(ticks.to_integral_value(rounding=ROUND_HALF_EVEN)))


def instrument_of(ctx: IngestContext, request: Request) -> Instrument:
    symbol = str(request.path_params.get("instrument", ""))
    instrument = ctx.instruments.get(symbol)
    if instrument is None:
        raise invalid([ErrorDetail("instrument", f"unknown instrument {symbol[:64]!r}")])
    return instrument


def time_param(request: Request, name: str) -> dt.datetime | None:
    """An ISO-8601 or epoch-ms query parameter; 422 when malformed."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise invalid([ErrorDetail(name, str(exc))]) from None


async def get_ticker(ctx: IngestContext, request: Request) -> Response:
    """The last 24 h of the instrument: [now - 24 h, now)."""
    instrument = instrument_of(ctx, request)
    end = now_ms()
    start = end - TICKER_WINDOW
    stats = await ctx.public_reads.run(lambda conn: market.window_stats(conn, instrument.symbol, start, end))
    return json_response(TickerView(
        instrument=instrument.symbol, from_=iso(start), to=iso(end), open=price_text(instrument, stats.open),
        high=price_text(instrument, stats.high), low=price_text(instrument, stats.low),
        last=price_text(instrument, stats.close), volume=plain(stats.volume),
        quote_volume=plain(stats.quote_volume), vwap=vwap_text(instrument, stats.volume, stats.quote_volume),
        trade_count=stats.trade_count))


async def get_candles(ctx: IngestContext, request: Request) -> Response:
    """Candles whose start lies in [start, end), oldest first, empty ones left out."""
    instrument = instrument_of(ctx, request)
    name = request.query_params.get("interval", DEFAULT_INTERVAL)
    interval = INTERVALS.get(name)
    if interval is None:
        raise invalid([ErrorDetail("interval", f"must be one of {', '.join(INTERVALS)}")])
    end = time_param(request, "end") or now_ms()
    start = time_param(request, "start") or end - DAY
    if start >= end:
        raise invalid([ErrorDetail("start", "must be before end")])
    first = ceil_to(start, interval)
    buckets = 0 if first >= end else -((first - end) // interval)
    if buckets > MAX_BUCKETS:
        raise invalid([ErrorDetail("start", f"{buckets} buckets of {name} from start to end: at most "
                                            f"{MAX_BUCKETS} per answer, narrow the range")])
    stop = first + buckets * interval
    found = await ctx.public_reads.run(
        lambda conn: market.candles(conn, instrument.symbol, first, stop, interval))
    return json_response([_candle(instrument, candle) for candle in found])


def _candle(instrument: Instrument, candle: Candle) -> CandleView:
    s = candle.stats
    # A stored candle holds at least one trade: every price and the vwap exist.
    assert s.open is not None and s.high is not None and s.low is not None and s.close is not None
    return CandleView(
        start=iso(candle.start), open=instrument_price(instrument, s.open),
        high=instrument_price(instrument, s.high), low=instrument_price(instrument, s.low),
        close=instrument_price(instrument, s.close), volume=plain(s.volume), quote_volume=plain(s.quote_volume),
        vwap=vwap_text(instrument, s.volume, s.quote_volume) or "", trade_count=s.trade_count)
