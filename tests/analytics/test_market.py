"""GET /analytics/{instrument}/ticker and /candles on hand-made trades with answers worked out by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics.time_buckets import DAY, MINUTE, floor_to
from services.common.times import iso
from tests.analytics.conftest import base_hour, hand_made, write
from tests.ingest.conftest import Engine


def candle(start: dt.datetime, o: str, h: str, lo: str, c: str, v: str, q: str, vwap: str, n: int) -> dict[str, Any]:
    return {"start": iso(start), "open": o, "high": h, "low": lo, "close": c, "volume": v, "quote_volume": q,
            "vwap": vwap, "trade_count": n}


async def test_ticker_is_the_last_24_hours_exactly(app: Engine, db: AsyncEngine) -> None:
    await write(db, hand_made(base_hour()))
    btc = (await app.client.get("/analytics/BTC-USD/ticker")).json()
    to = dt.datetime.fromisoformat(btc.pop("to"))
    assert dt.datetime.fromisoformat(btc.pop("from")) == to - DAY
    # The trade of 25 h ago is out; 50100.005 would round up to 50100.01 half-up, but vwap is half-even.
    assert btc == {"instrument": "BTC-USD", "open": "50000.00", "high": "50100.01", "low": "49990.00",
                   "last": "50100.01", "volume": "2.45", "quote_volume": "122553.053", "vwap": "50021.65",
                   "trade_count": 6}
    eth = (await app.client.get("/analytics/ETH-USD/ticker")).json()
    # 7500.15 / 2.5 = 3000.06: rounded to the 0.05 tick.
    assert {k: eth[k] for k in ("open", "high", "low", "last", "volume", "quote_volume", "vwap", "trade_count")} == {
        "open": "3000.05", "high": "3000.10", "low": "3000.05", "last": "3000.10", "volume": "2.5",
        "quote_volume": "7500.15", "vwap": "3000.05", "trade_count": 2}


async def test_ticker_without_trades(app: Engine) -> None:
    body = (await app.client.get("/analytics/BTC-USD/ticker")).json()
    assert body["open"] is None and body["vwap"] is None and body["last"] is None
    assert (body["volume"], body["quote_volume"], body["trade_count"]) == ("0", "0", 0)
    assert body["to"].endswith("Z") and len(body["to"]) == 24


async def test_candles_per_interval(app: Engine, db: AsyncEngine) -> None:
    b0 = base_hour()
    await write(db, hand_made(b0))
    m = MINUTE
    span = {"start": iso(b0), "end": iso(b0 + 2 * dt.timedelta(hours=1))}

    async def get(interval: str, **params: str) -> Any:
        answer = await app.client.get("/analytics/BTC-USD/candles", params={"interval": interval, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    minute = [
        candle(b0 + 10 * m, "50000.00", "50010.00", "50000.00", "50010.00", "0.75", "37502.5", "50003.33", 2),
        candle(b0 + 11 * m, "49990.00", "50005.50", "49990.00", "50005.50", "1.1", "54990.55", "49991.41", 2),
        # 30060.003 / 0.6 = 50100.005: half-even to 50100.00.
        candle(b0 + 65 * m, "50100.00", "50100.01", "50100.00", "50100.01", "0.6", "30060.003", "50100.00", 2),
    ]
    assert await get("1m", **span) == minute
    first_hour = ("50000.00", "50010.00", "49990.00", "50005.50", "1.85", "92493.05", "49996.24", 4)
    assert await get("5m", **span) == [candle(b0 + 10 * m, *first_hour), {**minute[2], "start": iso(b0 + 65 * m)}]
    assert await get("15m", **span) == [candle(b0, *first_hour), {**minute[2], "start": iso(b0 + 60 * m)}]
    assert await get("1h", **span) == [candle(b0, *first_hour), {**minute[2], "start": iso(b0 + 60 * m)}]
    # Epoch milliseconds work as well as ISO-8601; a bucket is listed when its start is in [start, end).
    ms = int((b0 + 11 * m).timestamp() * 1000)
    assert await get("1m", start=str(ms), end=str(ms + 60_000)) == [minute[1]]
    assert await get("1m", start=str(ms + 1), end=iso(b0 + 66 * m)) == [minute[2]]
    # The default window is the last 24 h: the trade of 25 h ago is not in it.
    assert await get("1h") == await get("1h", **span)

    day = await get("1d", start=iso(b0 - 2 * DAY))
    counts: dict[str, int] = {}
    for t in hand_made(b0):
        if t.instrument == "BTC-USD":
            start = iso(floor_to(t.executed_at, DAY))
            counts[start] = counts.get(start, 0) + 1
    assert [(c["start"], c["trade_count"]) for c in day] == sorted(counts.items())


@pytest.mark.parametrize("params, field", [
    ({"interval": "2m"}, "interval"),
    ({"start": "yesterday"}, "start"),
    ({"end": "2026-13-01T00:00:00Z"}, "end"),
    ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
    # 1,501 one-minute buckets
    ({"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T01:00:01Z"}, "start"),
    # Once 500s: epoch ms past datetime.max, and a time before datetime.min once moved to UTC.
    ({"start": "999999999999999"}, "start"),
    ({"start": "0001-01-01T00:00:00+01:00"}, "start"),
    ({"end": "999999999999999"}, "end"),
    ({"end": "0001-01-01T00:00:00+01:00"}, "end"),
    ({"end": "9999-12-31T23:59:59-01:00"}, "end"),
    ({"start": "253402300800000"}, "start"),  # 10000-01-01 in epoch ms
])
async def test_bad_candle_queries_are_422(app: Engine, params: dict[str, str], field: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    answer = await app.client.get("/analytics/BTC-USD/candles", params={"interval": "1m", **params})
    assert answer.status_code == 422, answer.text
    assert answer.json()["details"][0]["field"] == field
    assert not [r for r in caplog.records if r.exc_info]


async def test_candles_at_the_edges_of_the_time_range(app: Engine) -> None:
    for params in ({"end": "0"}, {"start": "1970-01-01T00:00:00Z", "end": "1970-01-01T00:01:00Z"},
                   {"interval": "1d", "start": "9999-11-01T00:00:00Z", "end": "9999-12-01T00:00:00Z"}):
        answer = await app.client.get("/analytics/BTC-USD/candles", params=params)
        assert answer.status_code == 200 and answer.json() == [], (params, answer.text)


async def test_1500_buckets_are_allowed_and_unknown_instruments_refused(app: Engine) -> None:
    ok = await app.client.get("/analytics/BTC-USD/candles",
                              params={"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T01:00:00Z"})
    assert ok.status_code == 200 and ok.json() == []
    for path in ("/analytics/DOGE-USD/ticker", "/analytics/DOGE-USD/candles"):
        answer = await app.client.get(path)
        assert answer.status_code == 422 and answer.json()["details"][0]["field"] == "instrument"


async def test_analytics_answer_503_while_postgres_is_unreachable(make_engine: Any) -> None:
    engine = await make_engine(prepare=False, database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    assert (await engine.client.get("/analytics/BTC-USD/ticker")).status_code == 503
