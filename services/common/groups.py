"""Consumer-group housekeeping shared by every stream consumer."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from services.common.redis_conn import AnyRedis
from services.common.stream_ids import StreamId, parse_stream_id
from services.common.wire import text


async def ensure_group(redis: AnyRedis, stream: str, group: str) -> None:
    """Create `group` on `stream` from id 0 (never `$`: a group sees every entry since the stream began)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def group_lag(redis: AnyRedis, stream: str, group: str) -> tuple[int, int] | None:
    """(lag, pending) of `group` on `stream`, or None when the group does not exist."""
    info = await group_info(redis, stream, group)
    if info is None:
        return None
    lag = info.get("lag")
    # Redis reports no lag when it cannot tell (entries deleted); count it as all unread.
    if lag is None:
        lag = await redis.xlen(stream)
    return int(lag), int(info["pending"])


async def needed_from(redis: AnyRedis, stream: str, info: dict[str, Any]) -> StreamId:
    """The lowest id the group `info` (an XINFO GROUPS row) still needs on `stream`: its oldest pending
    entry, else the one after its last-delivered id."""
    ms, seq = parse_stream_id(text(info["last-delivered-id"]))
    floor = (ms, seq + 1)  # everything up to last-delivered was delivered ...
    if int(info["pending"]):  # ... but what is pending was not acknowledged
        summary = await redis.xpending(stream, text(info["name"]))
        if summary["min"] is not None:
            floor = min(floor, parse_stream_id(text(summary["min"])))
    return floor


async def group_info(redis: AnyRedis, stream: str, group: str) -> dict[str, Any] | None:
    """The XINFO GROUPS row of `group` on `stream`; None when the stream or the group does not exist."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    return next((info for info in groups if text(info["name"]) == group), None)
