"""Database writes: one transaction per batch, every statement idempotent.

Each table's rows are COPied into a session-temporary staging table, then one INSERT ... SELECT ... ON
CONFLICT per table moves them in (COPY measured faster than an executemany of the same statements:
2,005 against 1,558 trades/s, load-test/optimisations.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Executable, Table, case, column, func, select
from sqlalchemy import table as table_clause
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.analytics.aggregates import record_trades
from services.common.db import order_events, orders, trades
from services.persister.records import STATIC_FIELDS, WriteSet


class DatabaseUnavailable(Exception):
    """The write failed for reasons outside the batch (connection lost, server down, deadlock): retry it."""


class EntryRejected(Exception):
    """PostgreSQL refused the batch's data itself (a data or constraint error): isolate the culprit."""


def _stage(target: Table) -> str:
    return f"persister_stage_{target.name}"


def _source(target: Table) -> Any:
    """The staging table's rows, in key order."""
    stage = table_clause(_stage(target), *(column(c.name) for c in target.c))
    return select(stage).order_by(*(stage.c[c.name] for c in target.primary_key))


def _insert_ignoring(target: Table, keys: list[str]) -> Insert:
    stmt = insert(target).from_select([c.name for c in target.c], _source(target))
    return stmt.on_conflict_do_nothing(index_elements=keys)


def _orders_upsert() -> Insert:
    """Insert an order's row, or bring the stored one forward.

    The state columns move only to a newer event (higher seq), whichever worker commits first; the
    order's own columns fill in whenever its accepted/rejected event lands, also after later events
    did (they inserted a row without them). Row locks on the primary key make this race-free.
    """
    stmt = insert(orders).from_select([c.name for c in orders.c], _source(orders))
    new = stmt.excluded
    newer = new.last_event_seq > orders.c.last_event_seq
    completing = orders.c.side.is_(None) & new.side.is_not(None)
    state = ("filled_quantity", "remaining_quantity", "filled_quote", "average_price", "status", "reason",
             "updated_at", "last_event_seq")
    set_: dict[str, Any] = {name: case((newer, new[name]), else_=orders.c[name]) for name in state}
    set_.update({name: func.coalesce(orders.c[name], new[name]) for name in STATIC_FIELDS})
    set_["quantity"] = case((completing, new.quantity), else_=orders.c.quantity)
    return stmt.on_conflict_do_update(index_elements=["order_id"], set_=set_, where=newer | completing)


# (table, statement fed by its staging table). Trades also update the analytics aggregates in the same
# statement, from the rows it really inserted.
STATEMENTS: dict[str, tuple[Table, Executable]] = {
    "trades": (trades, record_trades(_stage(trades))),
    "events": (order_events, _insert_ignoring(order_events, ["instrument", "seq"])),
    "orders": (orders, _orders_upsert()),
}


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
                for name, batch in (("trades", rows.trades), ("events", rows.events), ("orders", rows.orders)):
                    if not batch:
                        continue
                    target, statement = STATEMENTS[name]
                    await self._copy(conn, target, batch)
                    await conn.execute(statement)
        except (TimeoutError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _classify(exc) from exc
        return Written(len(rows.trades), len(rows.events), len(rows.orders))

    @staticmethod
    async def _create_stage(conn: AsyncConnection, target: Table) -> None:
        # Through SQLAlchemy, so that its BEGIN has been sent before the COPY: a COPY outside the
        # transaction would commit on its own, and ON COMMIT DELETE ROWS would empty the stage at once.
        # Every time, not once per session: a rolled-back batch takes the table's creation with it.
        await conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_stage(target)} (LIKE {target.name}) "
                                   "ON COMMIT DELETE ROWS")

    @classmethod
    async def _copy(cls, conn: AsyncConnection, target: Table, batch: list[dict[str, Any]]) -> None:
        stage = _stage(target)
        await cls._create_stage(conn, target)
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        names = [c.name for c in target.c]
        await driver.copy_records_to_table(stage, records=[tuple(row.get(n) for n in names) for row in batch],
                                           columns=names)
