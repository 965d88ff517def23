"""The one way services open Redis connections."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Above every BLOCK a setting may ask for (redis-py 8 defaults to 5 s, which breaks long XREADs).
REDIS_SOCKET_TIMEOUT_S = 10.0
# The longest BLOCK of a blocking read: its reply must be back before the socket times out.
MAX_BLOCK_MS = int(REDIS_SOCKET_TIMEOUT_S * 1000) - 1000


def connect(url: str, *, socket_timeout: float = REDIS_SOCKET_TIMEOUT_S, max_connections: int = 64) -> Redis:
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
