"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError, ResponseError
from starlette.requests import Request
from starlette.responses import Response

from services.common.keys import MATCHER_GROUP
from services.common.redis_batch import BatcherClosed
from services.common.wire import text
from services.ingest.context import SCRIPTS, IngestContext
from services.ingest.errors import json_response
from services.ingest.halts import halt_gauges


class Health(msgspec.Struct, frozen=True):
    status: str = "ok"


_HEALTHY = Health()


class Readiness(msgspec.Struct, frozen=True):
    status: str
    missing: list[str]


async def healthz(request: Request) -> Response:
    return json_response(_HEALTHY)


async def _missing(ctx: IngestContext) -> list[str]:
    try:
        await ctx.redis.ping()
    except (RedisError, OSError):
        return ["redis"]
    missing: list[str] = []
    try:
        loaded = await ctx.redis.script_exists(*(s.sha for s in SCRIPTS))
        if not all(loaded):
            # After a Redis restart nothing would load them (no traffic reaches an unready
            # instance), so readiness loads them itself.
            await ctx.load_scripts()
    except (RedisError, OSError):
        missing.append("lua_scripts")
    for keys in ctx.keys.values():
        try:
            groups = await ctx.redis.xinfo_groups(keys.orders)
        except ResponseError:
            groups = []
        except (RedisError, OSError):
            return ["redis"]
        names = {text(g["name"]) for g in groups}
        if MATCHER_GROUP not in names:
            missing.append(f"{MATCHER_GROUP} group on {keys.orders}")
    return missing


async def readyz(ctx: IngestContext, request: Request) -> Response:
    missing = await _missing(ctx)
    if missing:
        return json_response(Readiness("not_ready", missing), 503, {"Retry-After": "1"})
    return json_response(Readiness("ready", []))


async def metrics(ctx: IngestContext, request: Request) -> Response:
    try:
        await halt_gauges(ctx)
    except (RedisError, OSError, BatcherClosed):
        pass  # Redis unreachable: the gauges keep their last values, the rest is still worth scraping
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
