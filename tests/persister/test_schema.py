"""The Alembic schema: it matches the Table objects the services query, and migrates down and up again."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import downgrade, drop_database, metadata, migrate, with_database


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_table_definitions_and_round_trip(make_db: object) -> None:
    url = await make_db()  # type: ignore[operator]
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
        await engine.dispose()
        await downgrade(url)
        async with engine.connect() as conn:
            tables = await conn.exec_driver_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            assert [t for (t,) in tables] == ["alembic_version"]
        await engine.dispose()
        await migrate(url)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_0005_gives_resting_orders_their_accepted_events_seq(database_url: str) -> None:
    """Orders stored before queued_seq existed: the resting ones take their accepted event's seq (the place
    they still hold), final ones keep NULL; every row reads self_trade_prevention `none`."""
    url = with_database(database_url, f"{make_url(database_url).database}_{uuid.uuid4().hex[:8]}")
    await migrate(url, revision="0004")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for n, (order_id, status) in enumerate((("r1", "open"), ("r2", "partially_filled"), ("f1", "filled"),
                                                     ("r3", "open")), start=1):
                await conn.execute(text(
                    "INSERT INTO orders (order_id, client_id, instrument, side, type, time_in_force, post_only,"
                    " price, quantity, filled_quantity, remaining_quantity, filled_quote, status, created_at,"
                    " updated_at, last_event_seq) VALUES (:id, 'c', 'BTC-USD', 'buy', 'limit', 'GTC', false, 1,"
                    " 1, 0, 1, 0, :status, now(), now(), :seq)"), {"id": order_id, "status": status, "seq": 10 + n})
                if order_id != "r3":  # r3's accepted event is not stored: recovery skips it, as before
                    await conn.execute(text(
                        "INSERT INTO order_events (instrument, seq, event, order_id, client_id, status,"
                        " filled_quantity, remaining_quantity, filled_quote, ts) VALUES ('BTC-USD', :seq,"
                        " 'accepted', :id, 'c', 'open', 0, 1, 0, now())"), {"id": order_id, "seq": n})
        await engine.dispose()
        await migrate(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT order_id, queued_seq, self_trade_prevention FROM orders ORDER BY order_id"))).all()
        assert [tuple(r) for r in rows] == [
            ("f1", None, "none"), ("r1", 1, "none"), ("r2", 2, "none"), ("r3", None, "none")]
    finally:
        await engine.dispose()
        await drop_database(url)
