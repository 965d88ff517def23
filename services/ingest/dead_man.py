"""POST /clients/{client_id}/cancel-all-after: the dead man's switch.

Arming writes the deadline (ms since the epoch) as member `c:<client>` of every instrument's deadlines zset
(dl:{I}); 0 removes it. The matcher sweeps dl:{I} at the start of each match.lua call (at least every
MATCHER_SWEEP_MS while idle) and cancels every resting order of a client whose deadline passed (reason
`dead_man_switch`), then drops the member: the switch is disarmed. Kept in Redis, so a restart of any process
keeps it; while the matcher is down nothing is swept, and nothing is matched either.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.common.keys import deadline_of_client
from services.common.times import iso_ms
from services.ingest.clients import client_of
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, invalid, json_response
from services.ingest.handling import read_body
from services.ingest.validation import decode_object

MIN_TIMEOUT_MS = 1_000
MAX_TIMEOUT_MS = 3_600_000


class CancelAllAfterRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """{"timeout_ms": N}: cancel everything N ms from now unless called again; 0 disarms."""

    timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMEOUT_MS)]


class DeadManSwitch(msgspec.Struct, frozen=True):
    """The switch after the call: armed with its deadline, or disarmed (deadline null)."""

    client_id: str
    armed: bool
    deadline: str | None


_decoder = msgspec.json.Decoder(CancelAllAfterRequest)


async def post_cancel_all_after(ctx: IngestContext, request: Request) -> Response:
    """Checks in the order 413, 401, 400, 422, 404 (not a client id), 403; roles as positions."""
    body = await read_body(request, ctx.settings.max_body_bytes)
    ctx.authenticate(request)  # 401 before the body's own checks
    timeout_ms = decode_object(_decoder, body).timeout_ms
    if 0 < timeout_ms < MIN_TIMEOUT_MS:
        raise invalid([ErrorDetail("timeout_ms", f"must be 0 (disarm) or from {MIN_TIMEOUT_MS} to "
                                                 f"{MAX_TIMEOUT_MS}, not {timeout_ms}")])
    _, client_id = client_of(ctx, request, "orders")
    return json_response(await arm(ctx, client_id, timeout_ms))


async def arm(ctx: IngestContext, client_id: str, timeout_ms: int) -> DeadManSwitch:
    """Set the client's deadline to now + timeout_ms on every instrument, or remove it (0)."""
    member = deadline_of_client(client_id)
    keys = list(ctx.keys.values())
    if timeout_ms == 0:
        await asyncio.gather(*(ctx.batcher.execute("ZREM", k.deadlines, member) for k in keys))
        return DeadManSwitch(client_id, False, None)
    deadline = time.time_ns() // 1_000_000 + timeout_ms
    await asyncio.gather(*(ctx.batcher.execute("ZADD", k.deadlines, deadline, member) for k in keys))
    return DeadManSwitch(client_id, True, iso_ms(deadline))
