"""End-of-day settlement: each client's net position per asset at the end of a UTC date, written to
`settlements` (and the per-instrument totals behind it to `settlement_instruments`).

Computed from scratch over `trades` (the system of record) and reconciled against the hourly aggregates
that GET /clients/{id}/positions serves, in one REPEATABLE READ snapshot. Idempotent: a second run for
the same date finds every row equal and writes nothing.

    python -m services.analytics.settlement --date 2026-01-01
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, and_, delete, insert, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.analytics import from_trades, positions
from services.analytics.positions import net_by_asset
from services.analytics.stats import ZERO, Positions, Sides
from services.analytics.time_buckets import DAY, day_end, now_ms, parse_date
from services.common.db import database_url, make_engine, settlement_instruments, settlements
from services.common.env import instruments_file
from services.common.instruments import Instruments, load_instruments

logger = logging.getLogger(__name__)

# pg_advisory_lock key space of this job: one lock per settlement date.
_LOCK_BASE = 0x5E771E << 24


class SettlementError(ValueError):
    """A date that cannot be settled (not over yet)."""


@dataclass(frozen=True, slots=True)
class SettlementReport:
    """What one run found and changed."""

    date: str
    as_of: str
    clients: int
    positions: int  # settlements rows (client x asset)
    changed: int  # rows inserted, updated or deleted in settlements and settlement_instruments
    reconciled: bool  # the aggregates agree with the trades, and every asset nets to zero across clients
    differences: list[str] = field(default_factory=list)


def _differences(truth: Positions, fast: Positions, label: str) -> list[str]:
    found = []
    for client in sorted(truth.keys() | fast.keys()):
        mine, theirs = truth.get(client, {}), fast.get(client, {})
        for symbol in sorted(mine.keys() | theirs.keys()):
            if mine.get(symbol) != theirs.get(symbol):
                found.append(f"{label} {client} {symbol}: trades {mine.get(symbol)} aggregates {theirs.get(symbol)}")
    return found


def _unbalanced(nets: dict[str, dict[str, Decimal]]) -> list[str]:
    totals: dict[str, Decimal] = {}
    for by_asset in nets.values():
        for asset, value in by_asset.items():
            totals[asset] = totals.get(asset, ZERO) + value
    return [f"asset {asset} nets to {total} across clients, not 0" for asset, total in sorted(totals.items())
            if total != 0]


Wanted = dict[tuple[str, str], dict[str, Any]]


async def _sync(conn: AsyncConnection, table: Table, key: str, day: dt.date, wanted: Wanted, now: dt.datetime) -> int:
    """Make the date's rows of `table` exactly `wanted` ((client_id, key) -> values); rows changed."""
    rows = (await conn.execute(select(table).where(table.c.settlement_date == day))).mappings().all()
    stored = {(r["client_id"], r[key]): r for r in rows}
    changed = 0
    for ident, values in sorted(wanted.items()):
        old = stored.get(ident)
        if old is not None and all(old[name] == value for name, value in values.items()):
            continue
        where = and_(table.c.settlement_date == day, table.c.client_id == ident[0], table.c[key] == ident[1])
        if old is None:
            await conn.execute(insert(table).values(settlement_date=day, client_id=ident[0], **{key: ident[1]},
                                                    **values, computed_at=now))
        else:
            await conn.execute(update(table).where(where).values(**values, computed_at=now))
        changed += 1
    stale = [ident for ident in stored if ident not in wanted]
    if stale:
        await conn.execute(delete(table).where(table.c.settlement_date == day,
                                               tuple_(table.c.client_id, table.c[key]).in_(stale)))
    return changed + len(stale)


def _sides_values(s: Sides) -> dict[str, Any]:
    return {"bought_quantity": s.bought_quantity, "bought_quote": s.bought_quote,
            "sold_quantity": s.sold_quantity, "sold_quote": s.sold_quote, "trade_count": s.trade_count}


async def settle(engine: AsyncEngine, instruments: Instruments, day: dt.date) -> SettlementReport:
    """Write the end-of-day positions of `day` (UTC) for every client; SettlementError if the day is not over."""
    as_of = day_end(day)
    if as_of > now_ms():
        raise SettlementError(f"{day.isoformat()} is not over yet (settle after {as_of.isoformat()})")
    async with engine.connect() as conn:
        lock = {"key": _LOCK_BASE + day.toordinal()}
        # A session lock taken before the snapshot: a second run for the date waits, then sees the first's rows.
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), lock)
        await conn.commit()
        try:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                report = await _settle_in(conn, instruments, day, as_of)
        finally:
            await conn.execution_options(isolation_level="READ COMMITTED")
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), lock)
            await conn.commit()
    log = logger.info if report.reconciled else logger.error
    log("settlement %s: %d clients, %d positions, %d rows changed, reconciled=%s %s", report.date, report.clients,
        report.positions, report.changed, report.reconciled, report.differences[:5])
    return report


async def _settle_in(conn: AsyncConnection, instruments: Instruments, day: dt.date, as_of: dt.datetime
                     ) -> SettlementReport:
    since = as_of - DAY
    truth, truth_day = await from_trades.all_positions(conn, as_of, since)
    fast, fast_day = await positions.all_positions(conn, as_of, since)
    nets = {client: net_by_asset(sides, instruments) for client, sides in truth.items()}
    differences = (_differences(truth, fast, "total") + _differences(truth_day, fast_day, "day")
                   + _unbalanced(nets))
    now = now_ms()
    wanted_nets: Wanted = {}
    for client, by_asset in nets.items():
        day_nets = net_by_asset(truth_day.get(client, {}), instruments)
        for asset, value in by_asset.items():
            wanted_nets[(client, asset)] = {"net": value, "day_net": day_nets.get(asset, ZERO)}
    wanted_sides = {(client, symbol): _sides_values(s) for client, by in truth.items() for symbol, s in by.items()}
    changed = await _sync(conn, settlements, "asset", day, wanted_nets, now)
    changed += await _sync(conn, settlement_instruments, "instrument", day, wanted_sides, now)
    return SettlementReport(date=day.isoformat(), as_of=as_of.isoformat().replace("+00:00", "Z"),
                            clients=len(truth), positions=len(wanted_nets), changed=changed,
                            reconciled=not differences, differences=differences)


async def _main(day: dt.date, url: str, instruments: Instruments) -> SettlementReport:
    engine = make_engine(url, pool_size=1)
    try:
        return await settle(engine, instruments, day)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """`python -m services.analytics.settlement --date YYYY-MM-DD` (default: yesterday, UTC)."""
    parser = argparse.ArgumentParser(description="Write each client's end-of-day net positions of a UTC date.")
    parser.add_argument("--date", help="the UTC date to settle, YYYY-MM-DD (default: yesterday)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        day = parse_date(args.date) if args.date else now_ms().date() - dt.timedelta(days=1)
        report = asyncio.run(_main(day, database_url(), load_instruments(instruments_file())))
    except (ValueError, SettlementError) as exc:
        print(f"settlement: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.reconciled else 1


if __name__ == "__main__":
    sys.exit(main())
