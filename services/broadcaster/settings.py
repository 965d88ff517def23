"""The broadcaster's settings, read once from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.auth import AuthMode, allow_demo_keys_from_env, auth_mode_from_env
from services.common.env import (
    SettingsError,
    env_block_ms,
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


@dataclass(frozen=True, slots=True)
class BroadcasterSettings:
    """Everything the broadcaster needs; every field has an environment variable."""

    redis_url: str
    key_prefix: str
    instruments: Instruments
    api_keys_file: Path
    auth_mode: AuthMode = "on"
    # False (ALLOW_DEMO_KEYS=0, the Docker image): refuse to start with a key of the public demo set.
    allow_demo_keys: bool = True
    host: str = "127.0.0.1"
    port: int = 3001
    # Messages waiting per client. Payloads are shared between clients, so a slot costs a pointer;
    # it must hold at least one reader batch (read_count per stream) or a healthy client is dropped.
    queue_bound: int = 10_000
    max_batch: int = 50  # messages per frame when several are waiting (FACTS.md: 50 per frame ~7x throughput)
    max_subscriptions: int = 100  # (channel, instrument) pairs per connection
    max_message_bytes: int = 4096  # a client message above this gets an `error`
    max_replay: int = 10_000  # trades replayed for one since_seq, per instrument
    # Abuse limits (CONTRACT.md, "Limits and abuse"). 50 messages/s is far above what a client needs
    # (a few subscribes, pings every few seconds) and caps what one socket can make the server parse.
    max_messages_per_sec: int = 50
    # Connections at once; beyond, the handshake gets 503. Each costs a session, two tasks and buffers.
    max_connections: int = 10_000
    # A client with something to send that has not taken a frame for this long is closed with 1013,
    # however short its queue: a stopped reader otherwise holds its queue and kernel buffers forever.
    stall_s: float = 5.0
    # A subscribe reuses the instrument's last snapshot (plus the deltas since) for this long, so
    # subscribe loops walk the book in Redis at most once per instrument per period.
    snapshot_cache_ms: int = 1000
    snapshot_levels: int = 1_000_000  # levels per side read for a snapshot: the whole book
    send_buffer_bytes: int = 0  # kernel send buffer per connection; 0 leaves it to autotuning
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    read_count: int = 500  # entries per stream per XREAD
    read_block_ms: int = 1000
    # After a read that filled no stream's count, wait this long before the next: entries gather, so
    # the reader (and Redis) wake less often per entry and frames carry more messages.
    read_linger_ms: int = 2
    close_timeout_s: float = 5.0  # how long a dropped client gets to take its 1013 close frame
    shutdown_timeout_s: int = 5
    log_level: str = "INFO"
    redis_mode: RedisMode = "single"  # on a cluster, the reader follows each instrument in an XREAD of its own
    # Where the market page's browser reaches ingest's read API (book, trades, candles, ticker): a URL as the
    # browser sees it, which is why it is a setting and not derived from INGEST_HOST.
    ingest_public_url: str = "http://127.0.0.1:3000"

    def __post_init__(self) -> None:
        if not self.stall_s > 0:
            raise SettingsError(f"BROADCASTER_STALL_S={self.stall_s} must be above 0")
        if not self.ingest_public_url.startswith(("http://", "https://")):
            raise SettingsError(f"INGEST_PUBLIC_URL={self.ingest_public_url!r} must be an http:// or https:// URL "
                                "(ingest's address as the market page's browser reaches it)")
        if self.queue_bound < 2 * self.read_count:
            raise SettingsError(f"BROADCASTER_QUEUE_BOUND={self.queue_bound} must be at least twice "
                                f"BROADCASTER_READ_COUNT={self.read_count}: one read may queue that many at once")

    @property
    def ws_max_size(self) -> int:
        """uvicorn's hard frame limit (closes with 1009); below it, big messages get an `error` instead."""
        return max(65_536, 16 * self.max_message_bytes)

    @classmethod
    def from_env(cls) -> BroadcasterSettings:
        """Build the settings from the environment (see CONTRACT.md and the README for the variables)."""
        return cls(
            redis_url=redis_url(),
            redis_mode=redis_mode(),
            key_prefix=redis_key_prefix(),
            instruments=load_instruments(instruments_file()),
            api_keys_file=env_path("API_KEYS_FILE", "config/demo_api_keys.toml"),
            auth_mode=auth_mode_from_env(),
            allow_demo_keys=allow_demo_keys_from_env(),
            host=env_str("BROADCASTER_HOST", "127.0.0.1"),
            port=env_int("BROADCASTER_PORT", 3001, minimum=0),
            queue_bound=env_int("BROADCASTER_QUEUE_BOUND", 10_000, minimum=2),
            max_batch=env_int("BROADCASTER_MAX_BATCH", 50, minimum=1),
            max_subscriptions=env_int("BROADCASTER_MAX_SUBSCRIPTIONS", 100, minimum=1),
            max_message_bytes=env_int("BROADCASTER_MAX_MESSAGE_BYTES", 4096, minimum=64),
            max_replay=env_int("BROADCASTER_MAX_REPLAY", 10_000, minimum=1),
            max_messages_per_sec=env_int("BROADCASTER_MAX_MESSAGES_PER_SEC", 50, minimum=1),
            max_connections=env_int("BROADCASTER_MAX_CONNECTIONS", 10_000, minimum=1),
            stall_s=env_float("BROADCASTER_STALL_S", 5.0),
            snapshot_cache_ms=env_int("BROADCASTER_SNAPSHOT_CACHE_MS", 1000, minimum=0),
            snapshot_levels=env_int("BROADCASTER_SNAPSHOT_LEVELS", 1_000_000, minimum=1),
            send_buffer_bytes=env_int("BROADCASTER_SEND_BUFFER_BYTES", 0, minimum=0),
            ping_interval_s=env_float("BROADCASTER_PING_INTERVAL_S", 20.0),
            ping_timeout_s=env_float("BROADCASTER_PING_TIMEOUT_S", 20.0),
            read_count=env_int("BROADCASTER_READ_COUNT", 500, minimum=1),
            read_block_ms=env_block_ms("BROADCASTER_READ_BLOCK_MS", 1000),
            read_linger_ms=env_int("BROADCASTER_READ_LINGER_MS", 2, minimum=0),
            close_timeout_s=env_float("BROADCASTER_CLOSE_TIMEOUT_S", 5.0),
            shutdown_timeout_s=env_int("BROADCASTER_SHUTDOWN_TIMEOUT_S", 5, minimum=1),
            log_level=env_str("LOG_LEVEL", "INFO").upper(),
            ingest_public_url=env_str("INGEST_PUBLIC_URL",
                                      f"http://127.0.0.1:{env_int('INGEST_PORT', 3000, minimum=1)}").rstrip("/"),
        )
