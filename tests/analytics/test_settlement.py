"""End-of-day settlement: exact nets from the trades, reconciled with the aggregates, idempotent."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics.settlement import settle
from services.common.instruments import Instruments
from tests.analytics.conftest import trade, write
from tests.conftest import REPO_ROOT, TWO_INSTRUMENTS
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, Engine

UTC = dt.UTC
D1, D2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)


def at(day: dt.date, hh: int, mm: int = 0, ss: int = 0, ms: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, ms * 1000, tzinfo=UTC)


TRADES = [
    trade("BTC-USD", 1, at(D1, 10), "100.00", "1", "client-A", "client-B"),
    trade("BTC-USD", 2, at(D1, 23, 59, 59, 999), "101.00", "0.5", "client-B", "client-A"),
    trade("BTC-USD", 3, at(D2, 0), "102.00", "0.25", "client-A", "client-A"),
    trade("ETH-USD", 1, at(D2, 12), "3000.05", "2", "client-C", "client-B"),
]


async def stored(db: AsyncEngine, day: dt.date) -> dict[tuple[str, str], tuple[str, str]]:
    async with db.connect() as conn:
        rows = await conn.execute(text("SELECT client_id, asset, net, day_net FROM settlements "
                                       "WHERE settlement_date = :d"), {"d": day})
        return {(r[0], r[1]): (format(r[2].normalize(), "f"), format(r[3].normalize(), "f")) for r in rows}


def d(x: str) -> str:
    return format(Decimal(x).normalize(), "f")


async def test_settlement_is_exact_idempotent_and_reconciled(db: AsyncEngine, instruments: Instruments) -> None:
    await write(db, TRADES)
    first = await settle(db, instruments, D1)
    assert (first.clients, first.positions, first.changed, first.reconciled) == (2, 4, 4 + 2, True)
    # The trade at 23:59:59.999 is in; the one at midnight belongs to the next day.
    assert await stored(db, D1) == {
        ("client-A", "BTC"): (d("0.5"), d("0.5")), ("client-A", "USD"): (d("-49.5"), d("-49.5")),
        ("client-B", "BTC"): (d("-0.5"), d("-0.5")), ("client-B", "USD"): (d("49.5"), d("49.5"))}
    again = await settle(db, instruments, D1)
    assert (again.changed, again.reconciled) == (0, True)

    second = await settle(db, instruments, D2)
    assert second.reconciled and second.clients == 3
    assert await stored(db, D2) == {
        ("client-A", "BTC"): (d("0.5"), d("0")), ("client-A", "USD"): (d("-49.5"), d("0")),
        ("client-B", "BTC"): (d("-0.5"), d("0")), ("client-B", "ETH"): (d("-2"), d("-2")),
        ("client-B", "USD"): (d("6049.6"), d("6000.1")),
        ("client-C", "ETH"): (d("2"), d("2")), ("client-C", "USD"): (d("-6000.1"), d("-6000.1"))}
    async with db.connect() as conn:
        detail = (await conn.execute(text(
            "SELECT bought_quantity, bought_quote, sold_quantity, sold_quote, trade_count FROM settlement_instruments "
            "WHERE settlement_date = :d AND client_id = 'client-A' AND instrument = 'BTC-USD'"), {"d": D2})).one()
    assert tuple(detail) == (Decimal("1.25"), Decimal("125.50"), Decimal("0.75"), Decimal("76"), 3)

    # A trade of D1 persisted late: settling D1 again corrects it, and a further run changes nothing.
    await write(db, [trade("BTC-USD", 9, at(D1, 15), "100.00", "1", "client-C", "client-A")])
    corrected = await settle(db, instruments, D1)
    assert corrected.changed == 2 + 2 + 1 + 1 and corrected.reconciled  # A's 2 nets, C's 2, A's and C's detail
    assert (await stored(db, D1))[("client-A", "BTC")] == (d("-0.5"), d("-0.5"))
    assert (await settle(db, instruments, D1)).changed == 0


async def test_settlement_reports_aggregates_that_disagree_with_the_trades(db: AsyncEngine,
                                                                           instruments: Instruments) -> None:
    await write(db, TRADES)
    async with db.begin() as conn:
        await conn.execute(text("UPDATE client_positions_1h SET bought_quantity = bought_quantity + 1 "
                                "WHERE client_id = 'client-A' AND hour_start = :h"), {"h": at(D1, 10)})
    report = await settle(db, instruments, D1)
    assert not report.reconciled
    assert report.differences[0].startswith("total client-A BTC-USD")
    # What is written comes from the trades, the system of record.
    assert (await stored(db, D1))[("client-A", "BTC")] == (d("0.5"), d("0.5"))


async def test_admin_endpoint_and_positions_agree(app: Engine, db: AsyncEngine) -> None:
    await write(db, TRADES)
    answer = await app.client.post("/admin/settlements", json={"date": "2026-03-02"}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["date"], body["as_of"], body["clients"], body["positions"], body["reconciled"]) == (
        "2026-03-02", "2026-03-03T00:00:00Z", 3, 7, True)
    assert (await app.client.post("/admin/settlements", json={"date": "2026-03-02"}, headers=ADMIN)
            ).json()["changed"] == 0
    # The settlement view through the positions endpoint: the same nets.
    view = (await app.client.get("/clients/client-B/positions", params={"as_of": "2026-03-03"},
                                 headers=BROKER)).json()
    assert view["as_of"] == "2026-03-03T00:00:00.000Z"
    assert {k: d(v) for k, v in view["net"].items()} == {
        a: n for (c, a), (n, _) in (await stored(db, D2)).items() if c == "client-B"}


async def test_admin_endpoint_refusals(app: Engine) -> None:
    async def post(body: Any, headers: dict[str, str] | None = ADMIN) -> Any:
        return await app.client.post("/admin/settlements", content=json.dumps(body) if not isinstance(body, bytes)
                                     else body, headers=headers or {})

    assert (await post({"date": "2026-03-01"}, None)).status_code == 401
    assert (await post({"date": "2026-03-01"}, KEY_A)).status_code == 403
    assert (await post({"date": "2026-03-01"}, BROKER)).status_code == 403
    assert (await post(b"{not json")).status_code == 400
    assert (await post(b"[" * 8000 + b"]" * 8000)).status_code == 400  # a schema-less decode once recursed: 500
    for body in ({"date": "2026-02-30"}, {"date": "01/03/2026"}, {}, {"date": "2026-03-01", "x": 1},
                 {"date": (dt.datetime.now(UTC) + dt.timedelta(days=1)).date().isoformat()}):
        answer = await post(body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["details"][0]["field"] == "date"


async def _settle_command(env: dict[str, str], date: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.analytics.settlement", "--date", date, cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_command_line(db: AsyncEngine, db_url: str) -> None:
    await write(db, TRADES)
    env = {**os.environ, "DATABASE_URL": db_url, "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS)}
    for changed in (6, 0):
        code, out, err = await _settle_command(env, "2026-03-01")
        assert code == 0, err
        report = json.loads(out)
        assert (report["changed"], report["reconciled"]) == (changed, True)
    code, _, err = await _settle_command(env, "tomorrow")
    assert code == 2 and "not a date" in err
