"""Whether a Redis or PostgreSQL server answers, and waiting until it does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import redis
from sqlalchemy.engine import make_url

from services.common.db import with_database
from services.common.urls import mask_url


class CredentialsRefused(RuntimeError):
    """The server answers but refuses the URL's user or password: waiting longer cannot help."""


def redis_answers(url: str) -> bool:
    """PING with the URL's credentials (and TLS for rediss://); CredentialsRefused if they are wrong."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.AuthenticationError as exc:
        raise CredentialsRefused(f"Redis at {mask_url(url)} refused the credentials: {exc}") from None
    except redis.RedisError:
        return False


async def postgres_answers_async(url: str) -> bool:
    """A connection to the server's `postgres` database succeeds (the engine's may not exist yet)."""
    parsed = make_url(with_database(url, "postgres"))
    try:
        conn = await asyncpg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                                     password=parsed.password, database="postgres", timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


def postgres_answers(url: str) -> bool:
    return asyncio.run(postgres_answers_async(url))


def wait_until(answers: Callable[[str], bool], url: str, timeout_s: float) -> bool:
    """Poll `answers(url)` until it is true or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if answers(url):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
