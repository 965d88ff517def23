"""Which servers the engine runs itself, decided per URL."""

from __future__ import annotations

import pytest

from services.common.env import SettingsError
from services.runtime.settings import RuntimeSettings


def test_each_url_is_decided_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://postgres@db.example:5432/trading")
    settings = RuntimeSettings.from_env()
    assert settings.own_redis and not settings.own_postgres
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/0")
    monkeypatch.delenv("DATABASE_URL")
    settings = RuntimeSettings.from_env()
    assert not settings.own_redis and settings.own_postgres


def test_defaults_are_the_contracts_ports_and_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "DATABASE_URL", "ENGINE_REDIS_PORT", "ENGINE_PG_PORT", "ENGINE_REDIS_APPENDFSYNC"):
        monkeypatch.delenv(name, raising=False)
    settings = RuntimeSettings.from_env()
    assert settings.redis_url == "redis://127.0.0.1:6390/0"
    assert settings.database_url == "postgresql+asyncpg://postgres@127.0.0.1:5440/trading"
    assert settings.appendfsync == "always"
    assert settings.data_dir == settings.run_dir / "data"


def test_an_unknown_fsync_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_REDIS_APPENDFSYNC", "sometimes")
    with pytest.raises(SettingsError, match="ENGINE_REDIS_APPENDFSYNC"):
        RuntimeSettings.from_env()
