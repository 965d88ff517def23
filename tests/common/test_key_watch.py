"""key_watch.KeyFile: the running services' key table follows its file; auth.py's file format round-trips."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from services.common.auth import (
    DEMO_KEY_HASHES,
    DEMO_KEYS,
    ApiKeysError,
    KeySpec,
    Principal,
    format_key_file,
    load_key_table,
    read_key_specs,
)
from services.common.key_watch import DemoKeysRefused, KeyFile
from tests.processes import REPO_ROOT

DEMO_FILE = REPO_ROOT / "config" / "demo_api_keys.toml"


def spec(key: str, role: str = "admin", client_id: str | None = None) -> KeySpec:
    return KeySpec(sha256=hashlib.sha256(key.encode()).hexdigest(), role=role,  # type: ignore[arg-type]
                   client_id=client_id)


def write(path: Path, *specs: KeySpec) -> None:
    """Replace the file as the CLI does (a new inode), so the change shows whatever the clock's resolution."""
    tmp = path.with_suffix(".new")
    tmp.write_text(format_key_file(list(specs)))
    os.replace(tmp, path)


def principal(keys: KeyFile, key: str) -> Principal | None:
    return keys.table.authenticate(f"Bearer {key}")


def test_the_demo_hashes_are_those_of_the_shipped_demo_file() -> None:
    assert {s.sha256 for s in read_key_specs(DEMO_FILE)} == DEMO_KEY_HASHES
    assert load_key_table(DEMO_FILE).has_demo_keys() and len(DEMO_KEYS) == 4


def test_the_file_format_round_trips(tmp_path: Path) -> None:
    specs = [spec("a", "trader", 'odd"client\\id'), spec("b", "broker"), spec("c")]
    path = tmp_path / "keys.toml"
    path.write_text(format_key_file(specs))
    assert read_key_specs(path) == specs
    with pytest.raises(ApiKeysError, match="round trip"):
        format_key_file([spec("d", "trader", "bad\udcff")])


def test_a_change_is_picked_up_and_revoked_ids_reported(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write(path, spec("one", "trader", "client-1"), spec("two"))
    keys = KeyFile(path, allow_demo=False)
    revoked: list[frozenset[str]] = []
    keys.on_revoke(revoked.append)
    assert not keys.reload_if_changed()  # unchanged: not even read
    assert principal(keys, "one") == Principal("trader", "client-1", spec("one").sha256[:16])

    write(path, spec("two"), spec("three", "trader", "client-3"))
    assert keys.reload_if_changed()
    assert principal(keys, "one") is None and principal(keys, "three") is not None
    assert revoked == [frozenset({spec("one").sha256[:16]})]

    # The same key with another client: its open sockets belong to the old principal.
    write(path, spec("two"), spec("three", "trader", "client-4"))
    assert keys.reload_if_changed() and revoked[-1] == frozenset({spec("three").sha256[:16]})
    write(path, spec("two"), spec("three", "trader", "client-4"), spec("five"))
    assert keys.reload_if_changed() and len(revoked) == 2  # nothing gone: no call


def test_a_malformed_or_missing_file_keeps_the_keys_in_use_with_one_error_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.toml"
    write(path, spec("one"))
    keys = KeyFile(path, allow_demo=True)
    path.write_text('[[key]]\nsha256 = "not-a-hash"\nrole = "admin"\n')
    with caplog.at_level(logging.INFO, logger="services.common.key_watch"):
        for _ in range(3):
            assert not keys.reload_if_changed()
        path.unlink()
        assert not keys.reload_if_changed() and not keys.reload_if_changed()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [getattr(r, "event", None) for r in errors] == ["api_keys_reload_failed"] * 2
    assert "64 hex digits" in errors[0].getMessage() and "1 keys in use stay" in errors[0].getMessage()
    assert principal(keys, "one") is not None
    write(path, spec("two"))
    assert keys.reload_if_changed() and principal(keys, "two") is not None and principal(keys, "one") is None


def test_the_demo_set_is_refused_unless_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DemoKeysRefused, match="ALLOW_DEMO_KEYS=0"):
        KeyFile(DEMO_FILE, allow_demo=False)
    # Any demo key counts, wherever its file lives.
    path = tmp_path / "keys.toml"
    write(path, spec("mine"), spec("demo-broker", "broker"))
    with pytest.raises(DemoKeysRefused):
        KeyFile(path, allow_demo=False)
    write(path, spec("mine"))
    keys = KeyFile(path, allow_demo=False)
    write(path, spec("mine"), spec("demo-admin"))
    with caplog.at_level(logging.INFO, logger="services.common.key_watch"):
        assert not keys.reload_if_changed()
    assert principal(keys, "demo-admin") is None and principal(keys, "mine") is not None
    assert [getattr(r, "event", None) for r in caplog.records if r.levelno >= logging.WARNING] == [
        "api_keys_reload_failed"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="services.common.key_watch"):
        KeyFile(DEMO_FILE, allow_demo=True).announce()
        KeyFile(DEMO_FILE, allow_demo=True)  # no line before announce(): the service says it once, at start
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "event", None) for r in warnings] == ["demo_api_keys"]
