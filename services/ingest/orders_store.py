"""Reading and cancelling stored orders: each instrument's order state hash, through the batcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from services.common.auth import Principal
from services.common.instruments import Instrument
from services.common.keys import HALT_INSTRUMENT, InstrumentKeys, halt_of_client
from services.common.redis_cluster_batch import AnyBatcher
from services.common.scripts import AMEND_SCRIPT, CANCEL_SCRIPT, AmendArgv, AmendKeys, CancelArgv, CancelKeys, astuple
from services.common.wire import FINAL_STATUSES, OrderRecord, decode_record

_MAX_POLL_S = 0.01
T = TypeVar("T")


class Found(msgspec.Struct, frozen=True):
    record: OrderRecord
    instrument: Instrument
    keys: InstrumentKeys


class CancelOutcome(msgspec.Struct, frozen=True):
    """A cancel's or an amend's request. kind: unknown, forbidden, final (already final), requested (the command
    is on the stream); an amend's also client_halted, instrument_halted."""

    kind: str
    record: OrderRecord | None = None


class OrderStore:
    """Order records of every configured instrument."""

    def __init__(self, batcher: AnyBatcher, instruments: dict[str, Instrument],
                 keys: dict[str, InstrumentKeys]) -> None:
        self._batcher = batcher
        self._instruments = instruments
        self._keys = keys

    async def find(self, order_id: str) -> Found | None:
        """The order's record, looked up in every instrument at once (one pipeline)."""
        symbols = list(self._keys)
        replies = await asyncio.gather(*(
            self._batcher.submit("HGET", self._keys[s].order_state, order_id) for s in symbols
        ))
        for symbol, packed in zip(symbols, replies, strict=True):
            if packed is not None:
                return Found(decode_record(packed), self._instruments[symbol], self._keys[symbol])
        return None

    async def get(self, keys: InstrumentKeys, order_id: str) -> OrderRecord | None:
        packed = await self._batcher.execute("HGET", keys.order_state, order_id)
        return None if packed is None else decode_record(packed)

    async def request_cancel(self, keys: InstrumentKeys, order_id: str,
                             principal: Principal) -> CancelOutcome:
        """Enqueue a cancel unless the order is unknown, someone else's or already final."""
        only_client = _only_client(principal)
        reply = await self._batcher.evalsha(
            CANCEL_SCRIPT, astuple(CancelKeys.of(keys)),
            astuple(CancelArgv(order_id=order_id, only_client_id=only_client, requester=principal.label,
                               ts=str(time.time_ns() // 1_000_000))),
        )
        kind = reply[0].decode()
        return CancelOutcome(kind, decode_record(reply[1]) if len(reply) > 1 else None)

    async def request_amend(self, keys: InstrumentKeys, order_id: str, principal: Principal, request_id: str,
                            price_ticks: int | None, quantity_lots: int | None, client_id: str) -> CancelOutcome:
        """Enqueue an amend (None: that value unchanged) unless the order is unknown, someone else's, already
        final, or its client (`client_id`, the order's) or instrument halted; its outcome will be under
        keys.result(request_id)."""
        reply = await self._batcher.evalsha(
            AMEND_SCRIPT, astuple(AmendKeys.of(keys)),
            astuple(AmendArgv(order_id=order_id, only_client_id=_only_client(principal), requester=principal.label,
                              request_id=request_id, price_ticks=_text(price_ticks),
                              quantity_lots=_text(quantity_lots), ts=str(time.time_ns() // 1_000_000),
                              halt_client=halt_of_client(client_id), halt_instrument=HALT_INSTRUMENT)),
        )
        kind = reply[0].decode()
        return CancelOutcome(kind, decode_record(reply[1]) if len(reply) > 1 else None)

    async def wait_result(self, key: str, deadline: float) -> bytes | None:
        """Poll a command's outcome key until the matcher stored it or time.monotonic() passes `deadline`; the
        outcome, taken (GETDEL: only its one asker reads it), or None."""
        found = await _poll(lambda: self._batcher.execute("GETDEL", key), lambda found: found is not None, deadline)
        return None if found is None else bytes(found)

    async def wait_final(self, keys: InstrumentKeys, order_id: str, timeout_s: float) -> OrderRecord | None:
        """Poll the record until its status is final; the last record seen, final or not."""
        return await _poll(lambda: self.get(keys, order_id),
                           lambda record: record is None or record.status in FINAL_STATUSES,
                           time.monotonic() + timeout_s)


async def _poll(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], deadline: float) -> T:
    """read() until done(value) or time.monotonic() passes `deadline`, backing off from 1 ms to _MAX_POLL_S; the
    last value read."""
    delay = 0.001
    value = await read()
    while not done(value):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, _MAX_POLL_S)
        value = await read()
    return value


def _only_client(principal: Principal) -> str:
    """The only client whose orders `principal` may change ("" any: broker, admin)."""
    return (principal.client_id or "") if principal.role == "trader" else ""


def _text(units: int | None) -> str:
    return "" if units is None else str(units)
