"""The ingest service's settings, read once from the environment at start."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import AuthMode, allow_demo_keys_from_env, auth_mode_from_env
from services.common.db import DEFAULT_DATABASE_URL, database_url
from services.common.env import (
    SettingsError,
    env_bool,
    env_float,
    env_int,
    env_path,
    env_str,
    instruments_file,
    redis_key_prefix,
    redis_mode,
    redis_url,
)
from services.common.instruments import Instruments, load_instruments
from services.common.redis_conn import RedisMode

# One accept.lua call holds Redis while it runs (about 20-40 µs per order): a batch's orders of one instrument
# are one call, so this bounds how long one request can keep every other client waiting.
MAX_BATCH_ORDERS = 1000
# PostgreSQL's statement_timeout takes at most INT_MAX ms; a larger one would fail every connection.
MAX_READ_TIMEOUT_MS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Everything the ingest service needs; every field has an environment variable."""

    redis_url: str
    key_prefix: str
    instruments: Instruments
    api_keys_file: Path
    redis_mode: RedisMode = "single"  # cluster: a ClusterBatcher, one pipeline per master per tick
    auth_mode: AuthMode = "on"
    # False (ALLOW_DEMO_KEYS=0, the Docker image): refuse to start with a key of the public demo set.
    allow_demo_keys: bool = True
    rate_limit_per_sec: int = 1000
    rate_limit_burst: int = 1000
    api_key_rate_limit_per_sec: int = 10_000  # per API key and instrument (Redis Cluster: one slot per call)
    api_key_rate_limit_burst: int = 10_000
    max_matcher_lag: int = 50_000
    lag_poll_interval_s: float = 0.2
    idempotency_ttl_s: int = 86_400
    cancel_wait_ms: int = 1000
    max_body_bytes: int = 16_384
    # POST /orders/batch: orders per request (1..MAX_BATCH_ORDERS) and the body's size.
    batch_max_orders: int = 100
    batch_max_body_bytes: int = 1_048_576
    host: str = "127.0.0.1"
    port: int = 3000
    log_level: str = "INFO"
    # One line per order and cancel (LOG_ORDERS=1); by default one `activity` line of counts every
    # LOG_ACTIVITY_S (0: none): the audit trail is in PostgreSQL and on the streams.
    log_orders: bool = False
    log_activity_s: float = 10.0
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_size: int = 4
    # Public PostgreSQL reads (GET /trades, /analytics/*, /clients/{id}/positions): their own pool of this
    # many connections, and a 503 read_timeout after this long (client deadline and statement_timeout).
    read_timeout_ms: int = 2000
    read_db_pool_size: int = 2
    # The order-entry socket (ws://…/trade): requests one connection may have in flight at once.
    trade_max_in_flight: int = 64
    # Browser origins allowed to read this API across origins: the market page the broadcaster serves.
    # Exact origins only, never "*": a wildcard would let any site a user visits read through their browser.
    cors_origins: tuple[str, ...] = ("http://127.0.0.1:3001", "http://localhost:3001")

    @classmethod
    def from_env(cls) -> IngestSettings:
        """Build the settings from the environment (see CONTRACT.md for the variables)."""
        return cls(
            redis_url=redis_url(),
            key_prefix=redis_key_prefix(),
            redis_mode=redis_mode(),
            instruments=load_instruments(instruments_file()),
            api_keys_file=env_path("API_KEYS_FILE", "config/demo_api_keys.toml"),
            auth_mode=auth_mode_from_env(),
            allow_demo_keys=allow_demo_keys_from_env(),
            rate_limit_per_sec=env_int("RATE_LIMIT_PER_SEC", 1000, minimum=0),
            rate_limit_burst=env_int("RATE_LIMIT_BURST", 1000, minimum=1),
            api_key_rate_limit_per_sec=env_int("API_KEY_RATE_LIMIT_PER_SEC", 10_000, minimum=0),
            api_key_rate_limit_burst=env_int("API_KEY_RATE_LIMIT_BURST", 10_000, minimum=1),
            max_matcher_lag=env_int("MAX_MATCHER_LAG", 50_000, minimum=0),
            lag_poll_interval_s=env_float("LAG_POLL_INTERVAL_S", 0.2),
            idempotency_ttl_s=env_int("IDEMPOTENCY_TTL_S", 86_400, minimum=1),
            cancel_wait_ms=env_int("CANCEL_WAIT_MS", 1000, minimum=0),
            max_body_bytes=env_int("MAX_BODY_BYTES", 16_384, minimum=1),
            batch_max_orders=env_int("BATCH_MAX_ORDERS", 100, minimum=1, maximum=MAX_BATCH_ORDERS),
            batch_max_body_bytes=env_int("BATCH_MAX_BODY_BYTES", 1_048_576, minimum=1),
            host=env_str("INGEST_HOST", "127.0.0.1"),
            port=env_int("INGEST_PORT", 3000, minimum=1),
            log_level=env_str("LOG_LEVEL", "INFO").upper(),
            log_orders=env_bool("LOG_ORDERS", False),
            log_activity_s=env_float("LOG_ACTIVITY_S", 10.0),
            database_url=database_url(),
            db_pool_size=env_int("INGEST_DB_POOL", 4, minimum=1),
            read_timeout_ms=env_int("READ_TIMEOUT_MS", 2000, minimum=1, maximum=MAX_READ_TIMEOUT_MS),
            read_db_pool_size=env_int("INGEST_READ_DB_POOL", 2, minimum=1),
            trade_max_in_flight=env_int("TRADE_MAX_IN_FLIGHT", 64, minimum=1),
            cors_origins=cors_origins_from_env(),
        )


def cors_origins_from_env() -> tuple[str, ...]:
    """CORS_ORIGINS, comma-separated; by default the broadcaster's origins on BROADCASTER_PORT (3001)."""
    port = env_int("BROADCASTER_PORT", 3001, minimum=0)
    raw = env_str("CORS_ORIGINS", f"http://127.0.0.1:{port},http://localhost:{port}")
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    for origin in origins:
        # A browser sends scheme://host[:port] and nothing else; anything more would never match.
        if "*" in origin or not re.fullmatch(r"https?://[^/\s]+", origin):
            raise SettingsError(f"CORS_ORIGINS: {origin!r} is not an origin such as http://127.0.0.1:3001 "
                                "(exact origins only, no '*')")
    return origins
