"""Fixtures of the persister tests: a database of each test's own, cloned from the migrated session one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.db import create_database, drop_database, with_database


@pytest.fixture
async def make_db(database_url: str) -> AsyncIterator[object]:
    """make_db() -> URL of a new database with the migrated schema (a TEMPLATE copy), dropped after the test."""
    made: list[str] = []
    base = make_url(database_url).database

    async def make() -> str:
        url = with_database(database_url, f"{base}_{uuid.uuid4().hex[:8]}")
        await create_database(url, template=database_url)
        made.append(url)
        return url

    yield make
    for url in made:
        await drop_database(url)


@pytest.fixture
async def db_url(make_db: object) -> str:
    """This test's own migrated database."""
    return await make_db()  # type: ignore[operator,no-any-return]


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(db_url)
    yield engine
    await engine.dispose()
