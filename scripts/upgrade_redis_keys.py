"""Move idempotency and client_order_id records written before keys were length-prefixed (issue 13) to the
key names ingest now reads, keeping their TTL.

    .venv/bin/python -m scripts.upgrade_redis_keys      # REDIS_URL, REDIS_KEY_PREFIX, INSTRUMENTS_FILE

Run it once when upgrading, after the old ingest stopped and before the new one starts (the matcher may
keep running). Without it a record written before the upgrade is not found until it expires (24 h): a retry
of such a request with its idempotency key would be a new order, and its client_order_id free again.

The old name `idem:{SYMBOL}:<client_id>:<key>` cannot say where the client id ends (both may contain ':'),
so the owner is read from the record itself: an idempotency record's stored answer names its client_id, a
client_order_id record names an order whose state names its client. A record whose owner cannot be read
(its order already trimmed from Redis) is left to expire. Running it twice changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re

import msgspec
from redis.asyncio import Redis

from services.common.env import instruments_file, redis_key_prefix, redis_url
from services.common.instruments import load_instruments
from services.common.keys import InstrumentKeys, instrument_keys
from services.common.redis_conn import connect
from services.common.wire import decode_record


class Counts(msgspec.Struct):
    moved: int = 0
    current: int = 0  # already in the new shape
    unresolved: int = 0  # owner unknown, or a new record of the same name exists: left to expire


class _Owner(msgspec.Struct):
    client_id: str


_decode_owner = msgspec.json.Decoder(_Owner).decode
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def _raw(value: bytes | str) -> bytes:
    # The connection does not decode responses: always bytes, typed as either.
    return value.encode() if isinstance(value, str) else value


async def _idempotency_owner(redis: Redis, keys: InstrumentKeys, value: bytes) -> str | None:
    # A record is the 64-character fingerprint, a newline, then the first answer (accept.lua).
    try:
        return _decode_owner(value[65:]).client_id
    except msgspec.MsgspecError:
        return None


async def _client_order_id_owner(redis: Redis, keys: InstrumentKeys, value: bytes) -> str | None:
    packed = await redis.hget(keys.order_state, value.decode())
    if packed is None:
        return None
    try:
        return decode_record(_raw(packed)).client_id
    except msgspec.MsgspecError:
        return None


async def _upgrade_kind(redis: Redis, keys: InstrumentKeys, kind: str, counts: Counts) -> None:
    head = f"{keys.prefix}{kind}:{{{keys.symbol}}}:"
    build = keys.idempotency if kind == "idem" else keys.client_order_id
    owner_of = _idempotency_owner if kind == "idem" else _client_order_id_owner
    # Listed before any rename: SCAN may or may not return a key renamed during the scan (its new name matches).
    found = [raw async for raw in redis.scan_iter(match=_GLOB_SPECIAL.sub(r"\\\1", head) + "*", count=1000)]
    for raw in found:
        name = raw.decode()
        value = await redis.get(raw)
        client_id = None if value is None else await owner_of(redis, keys, _raw(value))
        rest = name[len(head):]
        if client_id is not None and rest.startswith(f"{len(client_id)}:{client_id}:"):
            # What the new ingest reads for this client: current (the one shape both could take, client
            # "1" with key "1:k" of old and key "k" of new, is read the new way, as ingest will read it).
            counts.current += 1
        elif client_id is None or not rest.startswith(f"{client_id}:"):
            counts.unresolved += 1
        elif await redis.renamenx(raw, build(client_id, rest[len(client_id) + 1:])):
            counts.moved += 1  # RENAMENX keeps the TTL; old and new names share the instrument's slot
        else:
            counts.unresolved += 1


async def upgrade(redis: Redis, keys: InstrumentKeys) -> Counts:
    """Move one instrument's old-shape idempotency and client_order_id records to their new names."""
    counts = Counts()
    for kind in ("idem", "coid"):
        await _upgrade_kind(redis, keys, kind, counts)
    return counts


async def _main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    redis = connect(redis_url())
    try:
        for symbol in load_instruments(instruments_file()):
            counts = await upgrade(redis, instrument_keys(redis_key_prefix(), symbol))
            print(f"{symbol}: moved {counts.moved}, already current {counts.current}, "
                  f"left to expire {counts.unresolved}")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(_main())
