"""Typed reads of environment variables, used only by each service's Settings.from_env()."""

from __future__ import annotations

import os
from pathlib import Path

from redis.asyncio.connection import parse_url

from services.common.redis_conn import MAX_BLOCK_MS, REDIS_MODES, REDIS_SOCKET_TIMEOUT_S, RedisMode
from services.common.urls import mask_url

REPO_ROOT = Path(__file__).resolve().parents[2]


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={raw!r} must be at most {maximum}")
    return value


def env_block_ms(name: str, default: int) -> int:
    """The BLOCK of a blocking Redis read, in ms: at least 1, and short of the Redis socket timeout."""
    value = env_int(name, default, minimum=1)
    if value > MAX_BLOCK_MS:
        raise SettingsError(f"{name}={value} must be at most {MAX_BLOCK_MS}: a longer BLOCK would time out "
                            f"the {REDIS_SOCKET_TIMEOUT_S:g} s Redis socket")
    return value


def env_float(name: str, default: float) -> float:
    # Durations and intervals only, never money.
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} must be 1 or 0 (true/false, yes/no, on/off)")


def env_path(name: str, default: str) -> Path:
    path = Path(os.environ.get(name) or default)
    return path if path.is_absolute() else REPO_ROOT / path


def redis_url() -> str:
    return env_str("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_mode() -> RedisMode:
    """REDIS_MODE: `single` (default) or `cluster`; in cluster mode REDIS_URL names a node, database 0 only."""
    mode = env_str("REDIS_MODE", "") or "single"
    if mode == "single":
        return "single"
    if mode != "cluster":
        raise SettingsError(f"REDIS_MODE={mode!r} must be one of {', '.join(REDIS_MODES)}")
    url = redis_url()
    try:
        db = int(parse_url(url).get("db") or 0)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL={mask_url(url)!r} is not a Redis URL: {exc}") from None
    if db != 0:
        raise SettingsError(f"REDIS_URL={mask_url(url)!r} selects database {db}: a Redis Cluster has database 0 "
                            "only (REDIS_MODE=cluster)")
    return "cluster"


def redis_key_prefix() -> str:
    prefix = env_str("REDIS_KEY_PREFIX", "")
    if "{" in prefix or "}" in prefix:
        raise SettingsError(f"REDIS_KEY_PREFIX={prefix!r} must not contain braces (they pick the cluster slot)")
    return prefix


def instruments_file() -> Path:
    return env_path("INSTRUMENTS_FILE", "instruments.toml")
