"""Where the engine's own data services listen and keep their data, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.common.env import SettingsError, env_int, env_path, env_str

AppendFsync = Literal["always", "everysec", "no"]
APPEND_FSYNC: tuple[AppendFsync, ...] = ("always", "everysec", "no")
DATABASE_NAME = "trading"


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Which data services the engine runs itself, on which ports, with their data where."""

    run_dir: Path
    redis_port: int
    postgres_port: int
    # True where the operator gave no URL: the engine then runs that server itself.
    own_redis: bool
    own_postgres: bool
    # `always` is the engine's promise; `everysec` exists for the A/B measurement of its cost.
    appendfsync: AppendFsync = "always"
    # PostgreSQL refuses to run as root: a root engine runs it as this system user.
    postgres_os_user: str = "nobody"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def database_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.postgres_port}/{DATABASE_NAME}"

    @classmethod
    def from_env(cls) -> RuntimeSettings:
        """ENGINE_RUN_DIR, ENGINE_REDIS_PORT, ENGINE_PG_PORT, ENGINE_REDIS_APPENDFSYNC, ENGINE_PG_OS_USER."""
        appendfsync = env_str("ENGINE_REDIS_APPENDFSYNC", "always")
        if appendfsync not in APPEND_FSYNC:
            raise SettingsError(f"ENGINE_REDIS_APPENDFSYNC={appendfsync!r} must be one of {', '.join(APPEND_FSYNC)}")
        return cls(
            run_dir=env_path("ENGINE_RUN_DIR", "run"),
            redis_port=env_int("ENGINE_REDIS_PORT", 6390, minimum=1),
            postgres_port=env_int("ENGINE_PG_PORT", 5440, minimum=1),
            own_redis=not os.environ.get("REDIS_URL"),
            own_postgres=not os.environ.get("DATABASE_URL"),
            appendfsync=appendfsync,
            postgres_os_user=env_str("ENGINE_PG_OS_USER", "nobody"),
        )
