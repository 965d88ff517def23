"""The Alembic schema: it matches the Table objects the services query, and migrates down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import downgrade, metadata, migrate


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
