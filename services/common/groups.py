"""Consumer-group housekeeping shared by every stream consumer."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common.wire import text


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create `group` on `stream` from id 0 (never `$`: a group sees every entry since the stream began)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def group_lag(redis: Redis, stream: str, group: str) -> tuple[int, int] | None:
    """(lag, pending) of `group` on `stream`, or None when the group does not exist."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    for info in groups:
        name = info["name"]
        if text(name) == group:
            lag = info.get("lag")
            # Redis reports no lag when it cannot tell (entries deleted); count it as all unread.
            if lag is None:
                lag = await redis.xlen(stream)
            return int(lag), int(info["pending"])
    return None
