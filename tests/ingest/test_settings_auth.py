"""IngestSettings.from_env() and the API keys table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.auth import ApiKeysError, Principal, load_key_table
from services.common.env import SettingsError
from services.ingest.settings import IngestSettings
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import DEMO_KEYS


def test_from_env_reads_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS), "REDIS_KEY_PREFIX": "x:", "AUTH_MODE": "off",
        "RATE_LIMIT_PER_SEC": "0", "RATE_LIMIT_BURST": "5", "MAX_MATCHER_LAG": "7", "IDEMPOTENCY_TTL_S": "60",
        "CANCEL_WAIT_MS": "250", "INGEST_PORT": "3999", "API_KEYS_FILE": "config/other.toml",
    }.items():
        monkeypatch.setenv(name, value)
    settings = IngestSettings.from_env()
    assert (settings.key_prefix, settings.auth_mode, settings.rate_limit_per_sec, settings.rate_limit_burst,
            settings.max_matcher_lag, settings.idempotency_ttl_s, settings.cancel_wait_ms, settings.port) == (
        "x:", "off", 0, 5, 7, 60, 250, 3999)
    assert sorted(settings.instruments) == ["BTC-USD", "ETH-USD"]
    assert settings.api_keys_file.is_absolute() and settings.api_keys_file.name == "other.toml"
    assert (settings.host, settings.max_body_bytes, settings.lag_poll_interval_s) == ("127.0.0.1", 16384, 0.2)
    monkeypatch.setenv("AUTH_MODE", "maybe")
    with pytest.raises(SettingsError):
        IngestSettings.from_env()


def test_batch_limits_are_read_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENTS_FILE", str(TWO_INSTRUMENTS))
    settings = IngestSettings.from_env()
    assert (settings.batch_max_orders, settings.batch_max_body_bytes) == (100, 1_048_576)
    monkeypatch.setenv("BATCH_MAX_ORDERS", "1000")
    monkeypatch.setenv("BATCH_MAX_BODY_BYTES", "2048")
    settings = IngestSettings.from_env()
    assert (settings.batch_max_orders, settings.batch_max_body_bytes) == (1000, 2048)
    for name, value, message in (("BATCH_MAX_ORDERS", "0", "at least 1"), ("BATCH_MAX_ORDERS", "1001", "at most 1000"),
                                 ("BATCH_MAX_ORDERS", "many", "not an integer"),
                                 ("BATCH_MAX_BODY_BYTES", "0", "at least 1")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(SettingsError, match=message):
                IngestSettings.from_env()


def test_the_demo_keys_and_bearer_parsing() -> None:
    table = load_key_table(DEMO_KEYS)
    assert table.authenticate("Bearer demo-key-A") == Principal("trader", "client-A", _key_id(b"demo-key-A"))
    assert table.authenticate("bearer  demo-key-B ") == Principal("trader", "client-B", _key_id(b"demo-key-B"))
    assert table.authenticate("Bearer demo-broker") == Principal("broker", key_id=_key_id(b"demo-broker"))
    assert table.authenticate("Bearer demo-admin") == Principal("admin", key_id=_key_id(b"demo-admin"))
    for header in (None, "", "Bearer", "Basic demo-admin", "demo-admin", "Bearer demo-admin2", "Bearer \udcff"):
        assert table.authenticate(header) is None
    assert Principal("broker").may_act_for("anyone") and not Principal("trader", "a").may_act_for("b")


@pytest.mark.parametrize(("entry", "problem"), [
    ('sha256 = "abc"\nrole = "admin"', "64 hex"),
    (f'sha256 = "{"0" * 64}"\nrole = "trader"', "needs a client_id"),
    (f'sha256 = "{"0" * 64}"\nrole = "broker"\nclient_id = "x"', "only trader"),
    (f'sha256 = "{"0" * 64}"\nrole = "root"', "cannot read"),
])
def test_malformed_key_files_are_refused(tmp_path: Path, entry: str, problem: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f"[[key]]\n{entry}\n")
    with pytest.raises(ApiKeysError, match=problem):
        load_key_table(path)


def test_keys_are_stored_as_sha256(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[key]]\nsha256 = "{hashlib.sha256(b"s3cret").hexdigest()}"\nrole = "admin"\n')
    assert load_key_table(path).authenticate("Bearer s3cret") == Principal("admin", key_id=_key_id(b"s3cret"))


def _key_id(key: bytes) -> str:
    """A key's id: the head of its SHA-256, never the key itself."""
    return hashlib.sha256(key).hexdigest()[:16]
