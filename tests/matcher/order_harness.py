"""The matcher harness with issue 15's order management: orders enqueued through accept.lua (so the per-client
and per-session indexes are written as ingest writes them), amend, cancel-all, deadlines and outcome keys."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import msgspec

from services.common.keys import deadline_of_client, deadline_of_session
from services.common.scripts import ACCEPT_SCRIPT
from services.common.wire import AmendCommand, CancelAllCommand, CancelAllReason, CancelAllSide, decode_record
from services.ingest.accept import Limits, Placement, accepted_record, script_args
from services.ingest.validation import ValidOrder
from tests.matcher.harness import Harness

LIVE = frozenset({"accepted", "open", "partially_filled"})
NO_LIMITS = Limits(rate_per_sec=0, burst=1, key_id="", key_rate_per_sec=0, key_burst=1, overloaded=False,
                   idempotency_ttl_s=60)


def now_ms() -> int:
    return int(time.time() * 1000)


class OrderHarness(Harness):
    """Harness whose orders go through accept.lua, plus amend, cancel-all and deadlines."""

    async def new(self, side: str, price: str | None, quantity: str, *, order_id: str | None = None,
                  type: str = "limit", tif: str | None = None, post_only: bool = False,
                  client: str = "client-1", stp: str = "none", session: str = "") -> str:
        order_id = order_id or f"o{next(self._ids)}"
        price_ticks = self.instrument.price_ticks(Decimal(price)) if price is not None else 0
        order = ValidOrder(
            instrument=self.instrument, client_id=client, client_order_id="", side=side,  # type: ignore[arg-type]
            type=type, time_in_force=tif or ("IOC" if type == "market" else "GTC"),  # type: ignore[arg-type]
            post_only=post_only, price_ticks=price_ticks,
            quantity_lots=self.instrument.quantity_lots(Decimal(quantity)), idempotency_key=None,
            self_trade_prevention=stp,  # type: ignore[arg-type]
        )
        record = accepted_record(order, order_id, now_ms(), session=session)
        script_keys, argv = script_args(self.keys, [Placement(order, record, b"")], NO_LIMITS)
        [reply] = await ACCEPT_SCRIPT(self.redis, script_keys, argv)
        assert reply[0] == b"ok", reply
        return order_id

    async def amend(self, order_id: str, *, price: str | None = None, quantity: str | None = None,
                    request_id: str | None = None, client: str = "client-1") -> str:
        request_id = request_id or f"amend-{order_id}-{next(self._ids)}"
        command = AmendCommand(
            order_id=order_id, client_id=client, request_id=request_id,
            price_ticks="" if price is None else str(self.instrument.price_ticks(Decimal(price))),
            quantity_lots="" if quantity is None else str(self.instrument.quantity_lots(Decimal(quantity))),
            ts=str(now_ms()))
        await self.redis.xadd(self.keys.orders, msgspec.to_builtins(command))
        return request_id

    async def cancel_all(self, client: str, side: CancelAllSide = "", reason: CancelAllReason = "user",
                         request_id: str | None = None) -> str:
        request_id = request_id or f"cancel-all-{client}-{next(self._ids)}"
        command = CancelAllCommand(client_id=client, side=side, reason=reason, request_id=request_id,
                                   requester=client, ts=str(now_ms()))
        await self.redis.xadd(self.keys.orders, msgspec.to_builtins(command))
        return request_id

    async def arm_client(self, client: str, deadline_ms: int) -> None:
        await self.redis.zadd(self.keys.deadlines, {deadline_of_client(client): deadline_ms})

    async def arm_session(self, session: str, deadline_ms: int) -> None:
        await self.redis.zadd(self.keys.deadlines, {deadline_of_session(session): deadline_ms})

    async def result(self, request_id: str) -> Any:
        raw = await self.redis.get(self.keys.result(request_id))
        assert raw is not None, f"no outcome for {request_id}"
        return json.loads(raw)

    async def client_orders(self, client: str) -> list[str]:
        return [m.decode() for m in await self.redis.zrange(self.keys.client_orders(client), 0, -1)]

    async def session_orders(self, session: str) -> set[str]:
        return {m.decode() for m in await self.redis.smembers(self.keys.session_orders(session))}

    async def check_indexes(self) -> None:
        """Each client's index holds exactly its live orders, each session's set exactly its live orders."""
        records = [decode_record(v) for v in (await self.redis.hgetall(self.keys.order_state)).values()]
        live: dict[str, set[str]] = {}
        sessions: dict[str, set[str]] = {}
        for record in records:
            ids = live.setdefault(record.client_id, set())
            in_session = sessions.setdefault(record.session, set()) if record.session else set()
            if record.status in LIVE:
                ids.add(record.order_id)
                in_session.add(record.order_id)
        for client, ids in live.items():
            assert set(await self.client_orders(client)) == ids, client
        for session, ids in sessions.items():
            assert await self.session_orders(session) == ids, session
