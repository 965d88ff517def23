"""services/common/env.py: REDIS_MODE."""

from __future__ import annotations

import pytest

from services.common.env import SettingsError, redis_mode


@pytest.mark.parametrize(("mode", "url", "expected"), [
    (None, "redis://127.0.0.1:6379/5", "single"),
    ("", "redis://127.0.0.1:6379/0", "single"),
    ("single", "redis://127.0.0.1:6379/3", "single"),
    ("cluster", "redis://127.0.0.1:7000", "cluster"),
    ("cluster", "redis://:secret@127.0.0.1:7000/0", "cluster"),
])
def test_redis_mode(monkeypatch: pytest.MonkeyPatch, mode: str | None, url: str, expected: str) -> None:
    if mode is None:
        monkeypatch.delenv("REDIS_MODE", raising=False)
    else:
        monkeypatch.setenv("REDIS_MODE", mode)
    monkeypatch.setenv("REDIS_URL", url)
    assert redis_mode() == expected


def test_a_cluster_has_database_0_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MODE", "cluster")
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:7000/2")
    with pytest.raises(SettingsError, match="database 2") as raised:
        redis_mode()
    assert "secret" not in str(raised.value)


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MODE", "sentinel")
    with pytest.raises(SettingsError, match="REDIS_MODE='sentinel'"):
        redis_mode()
