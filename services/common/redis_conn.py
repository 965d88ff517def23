"""The one way services open Redis connections."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, socket_timeout: float = 10.0, max_connections: int = 64) -> Redis:
    # socket_timeout above every BLOCK we use (redis-py 8 defaults to 5 s, which breaks long XREADs).
    # No automatic retries (redis-py 8 retries 3 times by default): a command whose connection broke
    # may have run already, and resending an XADD or a script would do it twice. Callers decide.
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=3.0,
        health_check_interval=0,
        max_connections=max_connections,
        decode_responses=False,
        retry=Retry(NoBackoff(), 0),
    )
