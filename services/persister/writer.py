"""Database writes: one transaction per batch, every statement idempotent. Every statement the persister
runs on `trades`, `order_events` and `orders` is here; the analytics aggregates are analytics' own
(services/analytics/aggregates.py), called in the same transaction.

Each table's rows are COPied into a session-temporary staging table, then one INSERT ... SELECT ... ON
CONFLICT per table moves them in (COPY measured faster than an executemany of the same statements:
2,005 against 1,558 trades/s, load-test/optimisations.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Executable, Table, TableClause, case, column, delete, func, select
from sqlalchemy import table as table_clause
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.analytics.aggregates import add_trades
from services.common.db import order_events, orders, trades
from services.persister.records import WriteSet
from services.persister.rows import STATIC_FIELDS, EventRow, OrderRow, Row, TradeRow, column_names, records


class DatabaseUnavailable(Exception):
    """The write failed for reasons outside the batch (connection lost, server down, deadlock): retry it."""


class EntryRejected(Exception):
    """PostgreSQL refused the batch's data itself (a data or constraint error): isolate the culprit."""


def _stage(target: Table) -> TableClause:
    return table_clause(f"persister_stage_{target.name}", *(column(c.name) for c in target.c))


def _source(target: Table) -> Any:
    """The staging table's rows, in key order."""
    stage = _stage(target)
    return select(stage).order_by(*(stage.c[c.name] for c in target.primary_key))


def _insert_ignoring(target: Table, keys: list[str]) -> Insert:
    stmt = insert(target).from_select([c.name for c in target.c], _source(target))
    return stmt.on_conflict_do_nothing(index_elements=keys)


def _trades_insert() -> Executable:
    """Insert the staged trades, then leave staged only the ones that were new: the aggregates count those.

    A trade already stored (a batch delivered again, another worker's copy) is skipped by ON CONFLICT and
    dropped from the stage by the same statement, so the aggregates never count it twice.
    """
    stage = _stage(trades)
    new = _insert_ignoring(trades, ["trade_id"]).returning(trades.c.trade_id).cte("new")
    return delete(stage).where(stage.c.trade_id.not_in(select(new.c.trade_id)))


def _orders_upsert() -> Insert:
    """Insert an order's row, or bring the stored one forward.

    The state columns (the quantity among them: an amend changes it) move only to a newer event (higher
    seq), whichever worker commits first; the order's own columns fill in whenever an event carrying them
    lands, also after later events did (they inserted a row without them). The price moves only to an
    event that queued the order later (higher queued_seq: every price change re-queues), so an amend
    landing after a newer fill still sets it, and an older accepted event never undoes it. Row locks on
    the primary key make this race-free. records.py's _merge_orders merges a batch's rows the same way.
    """
    stmt = insert(orders).from_select([c.name for c in orders.c], _source(orders))
    new = stmt.excluded
    newer = new.last_event_seq > orders.c.last_event_seq
    completing = orders.c.side.is_(None) & new.side.is_not(None)
    requeued = new.queued_seq.is_not(None) & (
        orders.c.queued_seq.is_(None) | (new.queued_seq > orders.c.queued_seq))
    state = ("quantity", "filled_quantity", "remaining_quantity", "filled_quote", "average_price", "status",
             "reason", "updated_at", "last_event_seq")
    set_: dict[str, Any] = {name: case((newer, new[name]), else_=orders.c[name]) for name in state}
    set_.update({name: func.coalesce(orders.c[name], new[name]) for name in STATIC_FIELDS})
    set_["price"] = case((requeued, new.price), else_=func.coalesce(orders.c.price, new.price))
    set_["queued_seq"] = func.greatest(orders.c.queued_seq, new.queued_seq)
    return stmt.on_conflict_do_update(index_elements=["order_id"], set_=set_,
                                      where=newer | completing | requeued)


@dataclass(frozen=True, slots=True)
class _Target:
    """A table, the Struct of its rows, and the statement that moves its staged rows in."""

    table: Table
    row: type[Row]
    statement: Executable

    @property
    def stage(self) -> str:
        return _stage(self.table).name


TRADES = _Target(trades, TradeRow, _trades_insert())
EVENTS = _Target(order_events, EventRow, _insert_ignoring(order_events, ["instrument", "seq"]))
ORDERS = _Target(orders, OrderRow, _orders_upsert())

# Every staging table in one statement (one round trip per batch, not one per table). Through SQLAlchemy,
# so that its BEGIN has been sent before the COPYs: a COPY outside the transaction would commit on its own,
# and ON COMMIT DELETE ROWS would empty the stage at once. Every batch, not once per session: a rolled-back
# batch takes the tables' creation with it.
_CREATE_STAGES = "DO $$ BEGIN {} END $$".format(" ".join(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {t.stage} (LIKE {t.table.name}) ON COMMIT DELETE ROWS;"
    for t in (TRADES, EVENTS, ORDERS)))


@dataclass(frozen=True, slots=True)
class Written:
    """Rows sent per table (rows that already existed included: the writes are idempotent)."""

    trades: int
    events: int
    orders: int


def _classify(exc: BaseException) -> Exception:
    if not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        # Class 22 data exception, 23 integrity violation: the rows are at fault, not the server.
        if isinstance(state, str) and state[:2] in {"22", "23"}:
            return EntryRejected(f"{type(cause).__name__} [{state}]: {cause}")
    return DatabaseUnavailable(f"{type(exc).__name__}: {exc}")


class Writer:
    """Writes decoded batches to PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def write(self, rows: WriteSet) -> Written:
        """Write the batch in one transaction; DatabaseUnavailable or EntryRejected when it did not commit."""
        try:
            async with self.engine.begin() as conn:
                await conn.exec_driver_sql(_CREATE_STAGES)
                if rows.trades:
                    await self._copy(conn, TRADES, rows.trades)
                    await conn.execute(TRADES.statement)
                    await add_trades(conn, TRADES.stage)
                if rows.events:
                    await self._copy(conn, EVENTS, rows.events)
                    await conn.execute(EVENTS.statement)
                if rows.orders:
                    await self._copy(conn, ORDERS, rows.orders)
                    await conn.execute(ORDERS.statement)
        except (TimeoutError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _classify(exc) from exc
        return Written(len(rows.trades), len(rows.events), len(rows.orders))

    @staticmethod
    async def _copy(conn: AsyncConnection, target: _Target, batch: Sequence[Row]) -> None:
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        await driver.copy_records_to_table(target.stage, records=records(batch), columns=column_names(target.row))
