"""What an acknowledged order is exposed to, read from Redis's persistence settings (CONFIG GET).

An order is acknowledged (201) once it is on its orders stream in Redis; until the persister has
written its outcome to PostgreSQL, Redis's persistence decides whether it survives a restart or a
host crash. The engine cannot change a Redis it does not run (managed services refuse CONFIG), so it
says at start what the settings it finds mean.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from redis.exceptions import ResponseError

from services.common.redis_conn import AnyRedis
from services.common.wire import text

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Durability:
    """Redis's persistence settings as found (`unknown` where CONFIG was refused) and what they mean."""

    appendonly: str  # yes | no | unknown
    appendfsync: str  # always | everysec | no | unknown
    save: str  # the RDB schedule, "" for none, or unknown
    durable: bool  # an acknowledged order survives a host crash
    exposure: str  # what an acknowledged order is exposed to, in one sentence


def classify(appendonly: str, appendfsync: str, save: str) -> Durability:
    """The exposure of an acknowledged order under these settings."""
    aof, fsync = appendonly.lower(), appendfsync.lower()
    if aof == "yes" and fsync == "always":
        exposure = "appendonly yes, appendfsync always: every acknowledged order is on disk before Redis answers"
    elif aof == "yes" and fsync == "everysec":
        exposure = ("appendfsync everysec: a Redis process crash loses nothing, but a host crash can lose about "
                    "the last second of acknowledged orders")
    elif aof == "yes" and fsync == "no":
        exposure = ("appendfsync no: the kernel decides when the AOF reaches the disk (about every 30 s on Linux): "
                    "a host crash can lose that much of acknowledged orders")
    elif aof == "yes":
        exposure = ("AOF on with an unknown fsync policy: a host crash may lose the most recent acknowledged orders "
                    "(set appendfsync always to lose none)")
    elif aof == "no" and save == UNKNOWN:
        exposure = ("no AOF and an unknown RDB schedule: a restart loses at least the orders acknowledged since the "
                    "last snapshot, if any, that were not yet persisted")
    elif aof == "no" and save.strip():
        exposure = (f"no AOF, RDB snapshots only (save {save!r}): a restart returns older state, which the engine "
                    "heals, but orders acknowledged after the last snapshot and not yet persisted are lost")
    elif aof == "no":
        exposure = ("no persistence: a Redis restart loses every acknowledged order not yet persisted to "
                    "PostgreSQL (resting orders come back from PostgreSQL), with cancels in flight and "
                    "idempotency records")
    else:
        exposure = ("persistence settings unknown (CONFIG GET refused, as on many managed Redis services): what a "
                    "restart or host crash loses cannot be told from here; check the provider's guarantees "
                    "(appendonly yes + appendfsync always loses no acknowledged order)")
    return Durability(appendonly, appendfsync, save, aof == "yes" and fsync == "always", exposure)


async def read_durability(redis: AnyRedis) -> Durability:
    """CONFIG GET appendonly, appendfsync and save, classified; `unknown` for what Redis does not tell."""
    found: dict[str, str] = {}
    for name in ("appendonly", "appendfsync", "save"):
        try:
            reply = await redis.config_get(name)
        except ResponseError as exc:
            # Managed services rename or refuse CONFIG (unknown command, NOPERM): nothing more to learn.
            # An unreachable Redis raises on: the matcher cannot start without it anyway.
            logger.debug("CONFIG GET %s refused: %r", name, exc)
            break
        found.update({text(k): "" if v is None else text(v) for k, v in reply.items() if k is not None})
    return classify(found.get("appendonly", UNKNOWN), found.get("appendfsync", UNKNOWN), found.get("save", UNKNOWN))


async def report_durability(redis: AnyRedis) -> Durability:
    """Log one `redis_durability` line: INFO when fully durable, else a WARNING naming the exposure."""
    durability = await read_durability(redis)
    level = logging.INFO if durability.durable else logging.WARNING
    logger.log(level, "redis durability: %s", durability.exposure, extra={"event": "redis_durability",
                                                                          **asdict(durability)})
    return durability
