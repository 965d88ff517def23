"""The state match.lua checks the risk limits against, kept in the instrument's slot (issue 16).

- `ref_ticks` in meta: the reference price of the price band, the instrument's last trade price in ticks
  (absent before the first trade: no band). match.lua sets it in every call that trades.
- `oc:{I}` (InstrumentKeys.open_counts), client id -> that client's resting orders on the instrument (a client
  with none has no field): the open-order cap's count. match.lua keeps it exact as orders rest, fill, are
  cancelled (by their client, cancel-all, self-trade prevention, the dead man's switch, a disconnect) or amended
  (a re-queued order keeps its count).

A rebuild from PostgreSQL (recovery.py, heal.py) writes both from what it puts back (write_open_counts, the
reference in meta_fields) and marks meta with COUNTS_BUILT. An engine upgraded from a version without them, or
a Redis restored from before it, has meta without the mark: ensure_risk_state builds them once at start, before
the first match.lua call, from the book and the trades stream in Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import cast

from services.common.instruments import Instrument
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.scripts import MEMBER_ID_AT
from services.common.slots import AnyPipeline, transaction
from services.common.wire import RESTING_STATUSES, OrderRecord, decode_record, fields_to_dict

logger = logging.getLogger(__name__)

REFERENCE = "ref_ticks"  # meta field: the last trade price in ticks (match.lua's name)
COUNTS_BUILT = "open_counts"  # meta field: oc:{I} was built for the orders resting then, and kept since
CHUNK = 500


def open_counts(records: Iterable[OrderRecord]) -> dict[str, int]:
    """Resting orders per client among `records`."""
    counts: dict[str, int] = {}
    for record in records:
        if record.status in RESTING_STATUSES:
            counts[record.client_id] = counts.get(record.client_id, 0) + 1
    return counts


async def write_open_counts(redis: AnyRedis, keys: InstrumentKeys, counts: dict[str, int]) -> None:
    """Replace the instrument's open-order counts with `counts` (one MULTI: never half written)."""
    items = sorted(counts.items())

    def replace(pipe: AnyPipeline) -> None:
        pipe.delete(keys.open_counts)
        for start in range(0, len(items), CHUNK):
            pipe.hset(keys.open_counts, mapping=dict(items[start:start + CHUNK]))

    await transaction(redis, replace)


async def read_open_counts(redis: AnyRedis, keys: InstrumentKeys) -> dict[str, int]:
    """The open-order counts as match.lua keeps them."""
    counts = cast(dict[bytes, bytes], await redis.hgetall(keys.open_counts))
    return {k: int(v) for k, v in fields_to_dict(counts).items()}


async def resting_records(redis: AnyRedis, keys: InstrumentKeys) -> list[OrderRecord]:
    """The records of every order in the book's zsets."""
    records: list[OrderRecord] = []
    for side_key in (keys.bid_orders, keys.ask_orders):
        members = cast(list[bytes], await redis.zrange(side_key, 0, -1))
        ids = [m.decode()[MEMBER_ID_AT - 1:] for m in members]
        for start in range(0, len(ids), CHUNK):
            packed = cast(list[bytes | None], await redis.hmget(keys.order_state, ids[start:start + CHUNK]))
            records.extend(decode_record(p) for p in packed if p is not None)
    return records


async def last_trade_ticks(redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys) -> int | None:
    """The price of the newest entry of the trades stream, in ticks (None when the stream is empty)."""
    newest = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrevrange(keys.trades, count=1))
    if not newest:
        return None
    return instrument.price_ticks_of(fields_to_dict(newest[0][1])["price"])


async def ensure_risk_state(redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys) -> bool:
    """Build the open-order counts (and the reference price, where meta has none) when meta does not say they
    were built; True when it built them. Run before the instrument's first match.lua call of a process."""
    if await redis.hexists(keys.meta, COUNTS_BUILT):
        return False
    records = await resting_records(redis, keys)
    counts = open_counts(records)
    reference = None if await redis.hexists(keys.meta, REFERENCE) else await last_trade_ticks(redis, instrument, keys)
    await write_open_counts(redis, keys, counts)
    mark: dict[str, str] = {COUNTS_BUILT: "1"}
    if reference is not None:
        mark[REFERENCE] = str(reference)
    await redis.hset(keys.meta, mapping=mark)  # type: ignore[arg-type]
    if records or reference is not None:
        logger.info("risk state built from the book in redis", extra={
            "event": "risk_state_built", "instrument": instrument.symbol, "resting_orders": len(records),
            "clients": len(counts), "reference_ticks": reference})
    return True
