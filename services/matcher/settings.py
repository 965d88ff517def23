"""The matcher's settings, read once from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import env
from services.common.db import database_url
from services.common.instruments import Instruments, load_instruments
from services.common.redis_conn import RedisMode


@dataclass(frozen=True, slots=True)
class MatcherSettings:
    """Everything the matcher needs; every field has an environment variable."""

    redis_url: str
    key_prefix: str
    instruments: Instruments
    consumer: str  # stable name, and lease-holder id: a restarted matcher continues as the same consumer
    batch_size: int  # commands per match.lua call when a backlog waits
    block_ms: int  # how long one idle wait for new commands lasts
    metrics_host: str
    metrics_port: int
    monitor_interval_s: float
    log_level: str
    database_url: str  # read only to rebuild the book when Redis lost the instrument's state
    recovery_backoff_max_s: float  # longest wait between attempts while PostgreSQL is unavailable
    # After a call that applied commands but not a full batch, wait this long and call again directly
    # (no XREAD wake-up in between): under load, one Redis round trip per batch of several commands.
    linger_ms: float = 1.0
    # While idle, match.lua is still called at least this often: each call first applies the deadlines that
    # have passed (dead man's switch, cancel-on-disconnect; docs/order-management.md), so one is applied
    # within this period plus one call. An idle instrument costs one XREAD and one script call per period.
    sweep_ms: int = 250
    # An instrument's lease (docs/scale-out.md): the holder renews it every quarter of this; when the holder dies,
    # another matcher takes the instrument over within this plus a poll (min(250 ms, this / 8)) and its prepare.
    lease_ms: int = 2000
    redis_mode: RedisMode = "single"  # REDIS_MODE (docs/scale-out.md)

    @classmethod
    def from_env(cls) -> MatcherSettings:
        """Read MATCHER_* and the engine-wide variables; SettingsError when one is unusable."""
        # Matcher N of MATCHER_WORKERS (circus: $(circus.wid)) gets a stable lease-holder id and the N-th port.
        index = env.env_int("MATCHER_WORKER_INDEX", 1, minimum=1)
        consumer = env.env_str("MATCHER_CONSUMER", f"matcher-{index}")
        if not consumer or any(c.isspace() for c in consumer):
            raise env.SettingsError(f"MATCHER_CONSUMER={consumer!r} must be a non-empty name without spaces")
        base_port = env.env_int("MATCHER_METRICS_PORT", 9101, minimum=0)
        return cls(
            redis_url=env.redis_url(),
            redis_mode=env.redis_mode(),
            key_prefix=env.redis_key_prefix(),
            instruments=load_instruments(env.instruments_file()),
            consumer=consumer,
            batch_size=env.env_int("MATCHER_BATCH", 256, minimum=1),
            block_ms=env.env_block_ms("MATCHER_BLOCK_MS", 1000),
            linger_ms=env.env_float("MATCHER_LINGER_MS", 1.0),
            sweep_ms=env.env_block_ms("MATCHER_SWEEP_MS", 250),
            lease_ms=env.env_int("MATCHER_LEASE_MS", 2000, minimum=100),
            metrics_host=env.env_str("MATCHER_METRICS_HOST", "127.0.0.1"),
            metrics_port=0 if base_port == 0 else base_port + 100 * (index - 1),
            monitor_interval_s=env.env_float("MATCHER_MONITOR_INTERVAL_S", 1.0),
            log_level=env.env_str("LOG_LEVEL", "INFO"),
            database_url=database_url(),
            recovery_backoff_max_s=env.env_float("MATCHER_RECOVERY_BACKOFF_MAX_S", 5.0),
        )
