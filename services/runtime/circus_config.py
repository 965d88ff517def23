"""The circus configuration of one engine: the four services, plus each data service the engine runs itself."""

from __future__ import annotations

from pathlib import Path

from services.common.env import REPO_ROOT
from services.runtime.settings import RuntimeSettings

DEPLOY = REPO_ROOT / "deploy"


def write(settings: RuntimeSettings) -> Path:
    """Write $ENGINE_RUN_DIR/circus.ini and return its path."""
    parts = [DEPLOY / "circus.ini"]
    if settings.own_redis:
        parts.append(DEPLOY / "circus-redis.ini")
    if settings.own_postgres:
        parts.append(DEPLOY / "circus-postgres.ini")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    target = settings.run_dir / "circus.ini"
    target.write_text("".join(part.read_text() for part in parts))
    return target


def data_watchers(settings: RuntimeSettings) -> list[str]:
    return [name for name, own in (("redis", settings.own_redis), ("postgres", settings.own_postgres)) if own]
