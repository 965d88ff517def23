"""The persister's settings, read once from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.db import database_url
from services.common.env import (
    SettingsError,
    env_block_ms,
    env_bool,
    env_float,
    env_int,
    env_str,
    instruments_file,
    redis_key_prefix,
    redis_mode,
    redis_url,
)
from services.common.redis_conn import RedisMode


@dataclass(frozen=True, slots=True)
class PersisterSettings:
    """Everything a persister worker needs; one per process."""

    redis_url: str
    key_prefix: str
    database_url: str
    instruments_file: Path
    consumer: str
    metrics_host: str
    metrics_port: int  # 0 turns the metrics/health server off
    batch: int  # entries per batch, across all streams
    block_ms: int
    claim_idle_ms: int
    claim_every_ms: int
    max_deliveries: int
    backoff_initial_s: float
    backoff_max_s: float
    lag_every_s: float
    db_pool_size: int
    # After a read that did not fill a batch, wait this long before the next one so entries gather:
    # fewer, larger transactions cost the persister, Redis and PostgreSQL far less CPU per entry.
    linger_ms: int = 20
    # Seconds between order-book snapshots (0: none); of several workers, one takes each (a Redis lock).
    snapshot_interval_s: float = 0.0
    # Seconds between retention runs (0: none); of several workers, one does each instrument (a Redis lock).
    retention_interval_s: float = 0.0
    stream_retention_s: float = 3600.0  # stream entries younger than this are kept, whatever the groups
    order_retention_s: float = 3600.0  # final order records stay in Redis this long after their last change
    # One line per persisted trade, cancel and matcher rejection (LOG_ORDERS=1); by default one `activity`
    # line of counts every LOG_ACTIVITY_S (0: none): the rows themselves are the audit trail.
    log_orders: bool = False
    log_activity_s: float = 10.0
    # REDIS_MODE: on a cluster each instrument's streams are read by a loop of their own (one slot per read).
    redis_mode: RedisMode = "single"

    @classmethod
    def from_env(cls) -> PersisterSettings:
        """Read PERSISTER_* and the engine-wide variables; SettingsError when one is unusable."""
        # Worker N of a group (circus: $(circus.wid)) gets a stable name and the N-th metrics port.
        index = env_int("PERSISTER_WORKER_INDEX", 1, minimum=1)
        consumer = env_str("PERSISTER_CONSUMER", f"persister-{index}")
        if not consumer or any(c.isspace() for c in consumer):
            raise SettingsError(f"PERSISTER_CONSUMER={consumer!r} must be a non-empty name without spaces")
        block_ms = env_block_ms("PERSISTER_BLOCK_MS", 1000)
        claim_idle_ms = env_int("PERSISTER_CLAIM_IDLE_MS", 30000, minimum=1)
        backoff_initial = env_float("PERSISTER_BACKOFF_INITIAL_S", 0.1)
        backoff_max = env_float("PERSISTER_BACKOFF_MAX_S", 5.0)
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise SettingsError(f"PERSISTER_BACKOFF_INITIAL_S={backoff_initial} must be positive and at most "
                                f"PERSISTER_BACKOFF_MAX_S={backoff_max}")
        return cls(
            redis_url=redis_url(),
            redis_mode=redis_mode(),
            key_prefix=redis_key_prefix(),
            database_url=database_url(),
            instruments_file=instruments_file(),
            consumer=consumer,
            metrics_host=env_str("PERSISTER_METRICS_HOST", "127.0.0.1"),
            metrics_port=_metrics_port(index),
            batch=env_int("PERSISTER_BATCH", 500, minimum=1),
            block_ms=block_ms,
            linger_ms=env_int("PERSISTER_LINGER_MS", 20, minimum=0),
            claim_idle_ms=claim_idle_ms,
            claim_every_ms=env_int("PERSISTER_CLAIM_EVERY_MS", max(1, claim_idle_ms // 2), minimum=1),
            max_deliveries=env_int("PERSISTER_MAX_DELIVERIES", 5, minimum=1),
            backoff_initial_s=backoff_initial,
            backoff_max_s=backoff_max,
            lag_every_s=env_float("PERSISTER_LAG_EVERY_S", 1.0),
            db_pool_size=env_int("PERSISTER_DB_POOL", 2, minimum=1),
            snapshot_interval_s=env_float("PERSISTER_SNAPSHOT_INTERVAL_S", 60.0),
            retention_interval_s=_non_negative("PERSISTER_RETENTION_INTERVAL_S", 30.0),
            stream_retention_s=_non_negative("STREAM_RETENTION_S", 3600.0),
            order_retention_s=_non_negative("ORDER_RETENTION_S", 3600.0),
            log_orders=env_bool("LOG_ORDERS", False),
            log_activity_s=env_float("LOG_ACTIVITY_S", 10.0),
        )


def _non_negative(name: str, default: float) -> float:
    value = env_float(name, default)
    if value < 0:
        raise SettingsError(f"{name}={value} must not be negative")
    return value


def _metrics_port(index: int) -> int:
    base = env_int("PERSISTER_METRICS_PORT", 9102, minimum=0)
    return 0 if base == 0 else base + index - 1
