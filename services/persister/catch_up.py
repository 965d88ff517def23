"""Writing what the persister group has not acknowledged yet, for another process that needs it written now.

The matcher's heal after a restored (older) Redis calls this before it rebuilds a book from PostgreSQL:
the restored trades and events streams may hold entries that PostgreSQL lacks, and the book must be
rebuilt from all of them. Rows and statements are the persister's own (decode, WriteSet, Writer), and
every write is idempotent, so a persister worker writing the same entries meanwhile changes nothing.
Nothing is acknowledged here: the group still reads these entries and finds them stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import group_info, needed_from
from services.common.instruments import Instrument, Instruments
from services.common.keys import PERSISTER_GROUP
from services.common.redis_conn import AnyRedis
from services.common.stream_ids import ZERO, format_stream_id
from services.common.wire import fields_to_dict, text
from services.persister.records import Decoded, Entry, MalformedEntry, WriteSet, decode, stream_refs
from services.persister.writer import EntryRejected, Writer

PAGE = 500


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Entries written per stream kind (ones already stored included), and the ones that cannot be."""

    trades: int
    events: int
    failed: int  # malformed or refused by PostgreSQL: left to the persister group, which dead-letters them


async def persist_unacknowledged(redis: AnyRedis, engine: AsyncEngine, prefix: str, instrument: Instrument,
                                 page: int = PAGE) -> CaughtUp:
    """Write every entry of the instrument's trades and events streams from the oldest one the persister
    group has not acknowledged (all of them when the group does not exist); DatabaseUnavailable when
    PostgreSQL cannot be written."""
    writer = Writer(engine)
    written = {"trades": 0, "events": 0}
    failed = 0
    for ref in stream_refs(prefix, Instruments({instrument.symbol: instrument})):
        info = await group_info(redis, ref.key, PERSISTER_GROUP)
        lower = format_stream_id(ZERO if info is None else await needed_from(redis, ref.key, info))
        while True:
            batch = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(ref.key, min=lower, max="+",
                                                                                      count=page) or [])
            decoded: list[Decoded] = []
            for entry_id, fields in batch:
                try:
                    decoded.append(decode(Entry(ref, text(entry_id), fields_to_dict(fields))))
                except MalformedEntry:
                    failed += 1
            if decoded:
                try:
                    await writer.write(WriteSet.of(decoded))
                    written[ref.kind] += len(decoded)
                except EntryRejected:
                    for one in decoded:  # as the persister does: the batch-mates of a refused row still land
                        try:
                            await writer.write(WriteSet.of([one]))
                            written[ref.kind] += 1
                        except EntryRejected:
                            failed += 1
            if len(batch) < page:
                break
            lower = "(" + text(batch[-1][0])
    return CaughtUp(written["trades"], written["events"], failed)
