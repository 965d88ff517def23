"""PostgreSQL: the table definitions every service queries, engines, and creating + migrating a database.

The schema itself is owned by Alembic (migrations/); these Table objects mirror it for queries and are
checked against it by tests/persister/test_schema.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Index,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.env import REPO_ROOT, env_str
from services.common.urls import mask_url

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/trading"
ALEMBIC_INI = REPO_ROOT / "alembic.ini"

metadata = MetaData()

# Decimals are NUMERIC without a scale: exact, whatever the instrument's tick and lot.
orders = Table(
    "orders", metadata,
    Column("order_id", Text, primary_key=True),
    Column("client_order_id", Text),  # NULL when the client gave none
    Column("client_id", Text, nullable=False),
    Column("instrument", Text, nullable=False),
    # NULL only while a later event has landed before the order's accepted/rejected event.
    Column("side", Text),
    Column("type", Text),
    Column("time_in_force", Text),
    Column("post_only", Boolean),
    Column("price", Numeric),  # NULL for market orders
    Column("quantity", Numeric, nullable=False),
    Column("filled_quantity", Numeric, nullable=False),
    Column("remaining_quantity", Numeric, nullable=False),
    Column("filled_quote", Numeric, nullable=False),
    Column("average_price", Numeric),  # NULL until the first fill
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_event_seq", BigInteger, nullable=False),
    # The event seq at which the order took its current place in its level's time queue: its accepted
    # event, or the last amended event that re-queued it (migration 0005). NULL for orders never queued
    # and for orders stored before 0005 that were final by then.
    Column("queued_seq", BigInteger),
    # none | cancel_taker | cancel_maker | cancel_both | decrement; NULL as `side` is.
    Column("self_trade_prevention", Text, server_default=text("'none'")),
    Index("ix_orders_client_created", "client_id", "created_at"),
    Index("ix_orders_instrument_status", "instrument", "status"),
)

order_events = Table(
    "order_events", metadata,
    Column("instrument", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("event", Text, nullable=False),
    Column("order_id", Text),  # NULL for a cancel of an unknown order
    Column("client_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("filled_quantity", Numeric, nullable=False),
    Column("remaining_quantity", Numeric, nullable=False),
    Column("filled_quote", Numeric, nullable=False),
    Column("reason", Text),
    Column("ts", DateTime(timezone=True), nullable=False),
    # The orders-stream entry id of the command that produced the event; NULL for events stored before it.
    Column("command_id", Text),
    Index("ix_order_events_order_id", "order_id"),
)

trades = Table(
    "trades", metadata,
    Column("trade_id", Text, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("price", Numeric, nullable=False),
    Column("quantity", Numeric, nullable=False),
    Column("taker_side", Text, nullable=False),
    Column("taker_order_id", Text, nullable=False),
    Column("maker_order_id", Text, nullable=False),
    Column("buy_order_id", Text, nullable=False),
    Column("sell_order_id", Text, nullable=False),
    Column("buyer_client_id", Text, nullable=False),
    Column("seller_client_id", Text, nullable=False),
    Column("executed_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("instrument", "seq", name="uq_trades_instrument_seq"),
    Index("ix_trades_instrument_executed", "instrument", text("executed_at DESC")),
    Index("ix_trades_executed", text("executed_at DESC")),
    Index("ix_trades_buyer", "buyer_client_id"),
    Index("ix_trades_seller", "seller_client_id"),
)

orderbook_snapshots = Table(
    "orderbook_snapshots", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("instrument", Text, nullable=False),
    Column("book_seq", BigInteger, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("bids", JSONB, nullable=False),
    Column("asks", JSONB, nullable=False),
    Index("ix_orderbook_snapshots_instrument_taken", "instrument", text("taken_at DESC")),
)

# Analytics aggregates, maintained by the persister in each batch's transaction from the trades it
# inserted (services/analytics/aggregates.py). Each equals a GROUP BY over `trades`.
def _candles(name: str) -> Table:
    return Table(
        name, metadata,
        Column("instrument", Text, primary_key=True),
        Column("bucket_start", DateTime(timezone=True), primary_key=True),  # UTC minute / hour
        # open/close are the prices of the bucket's first/last trade by (executed_at, seq).
        Column("open", Numeric, nullable=False),
        Column("open_at", DateTime(timezone=True), nullable=False),
        Column("open_seq", BigInteger, nullable=False),
        Column("high", Numeric, nullable=False),
        Column("low", Numeric, nullable=False),
        Column("close", Numeric, nullable=False),
        Column("close_at", DateTime(timezone=True), nullable=False),
        Column("close_seq", BigInteger, nullable=False),
        Column("volume", Numeric, nullable=False),
        Column("quote_volume", Numeric, nullable=False),
        Column("trade_count", BigInteger, nullable=False),
    )


candles_1m = _candles("candles_1m")
# The same per UTC hour: 1h and 1d answers read it (a 1d answer over 1,500 days: 36,000 rows, not 2.16M).
candles_1h = _candles("candles_1h")

client_positions_1h = Table(
    "client_positions_1h", metadata,
    Column("client_id", Text, primary_key=True),
    Column("instrument", Text, primary_key=True),
    Column("hour_start", DateTime(timezone=True), primary_key=True),  # UTC hour
    Column("bought_quantity", Numeric, nullable=False),
    Column("bought_quote", Numeric, nullable=False),
    Column("sold_quantity", Numeric, nullable=False),
    Column("sold_quote", Numeric, nullable=False),
    # Trades the client took part in; a self-trade is one trade (its quantity counts as bought and sold).
    Column("trade_count", BigInteger, nullable=False),
)

# End-of-day settlement: each client's net position per asset at the end of settlement_date (UTC).
settlements = Table(
    "settlements", metadata,
    Column("settlement_date", Date, primary_key=True),
    Column("client_id", Text, primary_key=True),
    Column("asset", Text, primary_key=True),
    Column("net", Numeric, nullable=False),  # all trades before the end of the date
    Column("day_net", Numeric, nullable=False),  # the trades of that date alone
    Column("computed_at", DateTime(timezone=True), nullable=False),
)

settlement_instruments = Table(
    "settlement_instruments", metadata,
    Column("settlement_date", Date, primary_key=True),
    Column("client_id", Text, primary_key=True),
    Column("instrument", Text, primary_key=True),
    Column("bought_quantity", Numeric, nullable=False),
    Column("bought_quote", Numeric, nullable=False),
    Column("sold_quantity", Numeric, nullable=False),
    Column("sold_quote", Numeric, nullable=False),
    Column("trade_count", BigInteger, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)

# The admin kill switches in force (issue 16; migration 0006): a row per halted client or instrument, inserted
# by ingest's admin endpoint before the halt reaches Redis and deleted before the lift does; the matcher's rebuild
# from PostgreSQL puts them back into Redis (services/common/halts.py owns the statements).
halts = Table(
    "halts", metadata,
    Column("scope", Text, primary_key=True),  # 'client' | 'instrument'
    Column("target", Text, primary_key=True),  # the client id, or the instrument's symbol
    Column("halted_at", DateTime(timezone=True), nullable=False),  # the first halt (repeats keep it)
    Column("halted_by", Text, nullable=False),  # the admin key's label
    CheckConstraint("scope IN ('client', 'instrument')", name="ck_halts_scope"),
)

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DatabaseNameError(ValueError):
    """A database name that cannot be created safely (it would need quoting)."""


def database_url() -> str:
    return env_str("DATABASE_URL", DEFAULT_DATABASE_URL)


def make_engine(url: str, *, pool_size: int = 4, max_overflow: int = 2,
                server_settings: Mapping[str, str] | None = None) -> AsyncEngine:
    """An asyncpg engine; pre-ping so connections that died with the server are replaced, not reused.
    `server_settings` are session settings every connection of the pool starts with (e.g. statement_timeout)."""
    connect_args = {"server_settings": dict(server_settings)} if server_settings else {}
    return create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                               pool_recycle=1800, connect_args=connect_args)


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _name(url: str) -> str:
    name = make_url(url).database
    if not name or not _DB_NAME.match(name):
        raise DatabaseNameError(f"database name {name!r} must match {_DB_NAME.pattern}")
    return name


async def create_database(url: str, *, template: str | None = None) -> bool:
    """Create the database `url` names when it is missing (a copy of `template`'s if given); True if created."""
    name = _name(url)
    copy = f' TEMPLATE "{_name(template)}"' if template else ""
    admin = create_async_engine(with_database(url, "postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            found = await conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = $1", (name,))
            if found.first() is not None:
                return False
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
            return True
    finally:
        await admin.dispose()


async def drop_database(url: str) -> None:
    """Drop the database `url` names, closing other sessions on it (tests only)."""
    name = _name(url)
    admin = create_async_engine(with_database(url, "postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


def _alembic(connection: Connection, ini: Path, revision: str, up: bool) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    # migrations/env.py runs on this connection instead of opening its own.
    config.attributes["connection"] = connection
    (command.upgrade if up else command.downgrade)(config, revision)


async def migrate(url: str, *, revision: str = "head", ini: Path = ALEMBIC_INI) -> None:
    """Create the database if missing, then `alembic upgrade` it to `revision`."""
    await create_database(url)
    await _run_alembic(url, ini, revision, up=True)


async def downgrade(url: str, *, revision: str = "base", ini: Path = ALEMBIC_INI) -> None:
    """`alembic downgrade` the database to `revision`."""
    await _run_alembic(url, ini, revision, up=False)


async def _run_alembic(url: str, ini: Path, revision: str, *, up: bool) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, ini, revision, up)
    finally:
        await engine.dispose()


def main() -> None:
    """`python -m services.common.db`: create and migrate DATABASE_URL's database."""
    url = database_url()
    asyncio.run(migrate(url))
    print(f"migrated {mask_url(url)} to head")


if __name__ == "__main__":
    main()
