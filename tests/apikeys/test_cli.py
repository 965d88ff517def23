"""python -m services.apikeys create | revoke | list, run as the operator runs it."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.auth import Principal, load_key_table, read_key_specs
from tests.apikeys.cli import apikeys, create_key, revoke_key
from tests.processes import REPO_ROOT


def test_create_stores_only_the_hash_and_prints_the_key_once(tmp_path: Path) -> None:
    keys_file = tmp_path / "secrets" / "keys.toml"  # neither the file nor its directory exists yet
    done = apikeys(keys_file, "create", "--role", "trader", "--client", "client-C")
    assert done.returncode == 0, done.stderr
    key_id, key = done.stdout.splitlines()[-1].split(" ")
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert key_id == digest[:16] and re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert len(key) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", key)
    assert "not shown again" in done.stderr and key not in done.stderr
    text = keys_file.read_text()
    assert key not in text and digest in text
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    # The services' own loader reads what the CLI wrote.
    table = load_key_table(keys_file)
    assert table.authenticate(f"Bearer {key}") == Principal("trader", "client-C", key_id)

    broker_id, broker = create_key(keys_file, "broker")
    admin_id, admin = create_key(keys_file, "admin")
    table = load_key_table(keys_file)
    assert len(table) == 3 and table.authenticate(f"Bearer {key}") is not None
    assert table.authenticate(f"Bearer {broker}") == Principal("broker", key_id=broker_id)
    assert table.authenticate(f"Bearer {admin}") == Principal("admin", key_id=admin_id)


def test_list_shows_ids_roles_and_clients_never_hashes(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    empty = apikeys(keys_file, "list")
    assert empty.returncode == 0 and empty.stdout.split() == ["KEY_ID", "ROLE", "CLIENT"]
    trader_id, trader = create_key(keys_file, "trader", "client-C")
    admin_id, admin = create_key(keys_file, "admin")
    listed = apikeys(keys_file, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert rows == [[trader_id, "trader", "client-C"], [admin_id, "admin", "-"]]
    for spec in read_key_specs(keys_file):
        assert spec.sha256 not in listed.stdout and spec.sha256[:17] not in listed.stdout
    assert trader not in listed.stdout and admin not in listed.stdout


def test_revoke_removes_the_key_and_refuses_an_unknown_id(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    gone_id, gone = create_key(keys_file, "trader", "client-C")
    kept_id, kept = create_key(keys_file, "broker")
    revoke_key(keys_file, gone_id)
    table = load_key_table(keys_file)
    assert table.authenticate(f"Bearer {gone}") is None and table.authenticate(f"Bearer {kept}") is not None

    again = apikeys(keys_file, "revoke", gone_id)
    assert again.returncode == 2
    assert f"no key with id {gone_id!r}" in again.stderr and again.stdout == ""
    assert [s.sha256[:16] for s in read_key_specs(keys_file)] == [kept_id]


@pytest.mark.parametrize(("args", "message"), [
    (["create", "--role", "trader"], "--client is required for a trader key"),
    (["create", "--role", "broker", "--client", "client-C"], "--client is for trader keys only"),
    (["create", "--role", "admin", "--client", "client-C"], "--client is for trader keys only"),
    (["create", "--role", "trader", "--client", "a b"], "is not a client_id"),
    (["create", "--role", "root"], "invalid choice: 'root'"),
    (["revoke"], "the following arguments are required: KEY_ID"),
])
def test_bad_arguments_exit_2_and_change_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    keys_file = tmp_path / "keys.toml"
    done = apikeys(keys_file, *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not keys_file.exists()


def test_without_api_keys_file_nothing_is_written(tmp_path: Path) -> None:
    done = apikeys(None, "create", "--role", "admin")
    assert done.returncode == 2 and "set API_KEYS_FILE" in done.stderr
    demo = REPO_ROOT / "config" / "demo_api_keys.toml"
    for path in (demo, Path("config/demo_api_keys.toml")):  # relative: from the repository root
        done = apikeys(path, "create", "--role", "admin")
        assert done.returncode == 2 and "is the shipped demo set" in done.stderr
    listed = apikeys(demo, "list")
    assert listed.returncode == 0 and [line.split()[1:] for line in listed.stdout.splitlines()[1:]] == [
        ["trader", "client-A"], ["trader", "client-B"], ["broker", "-"], ["admin", "-"]]
    assert subprocess.run(["git", "status", "--porcelain", "config"], cwd=REPO_ROOT, capture_output=True,
                          text=True).stdout == ""


def test_a_malformed_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[key]]\nsha256 = "abc"\nrole = "admin"\n')
    for args in (["create", "--role", "admin"], ["list"], ["revoke", "0123456789abcdef"]):
        done = apikeys(keys_file, *args)
        assert done.returncode == 2 and "sha256 must be 64 hex digits" in done.stderr, (args, done.stderr)
    assert keys_file.read_text() == '[[key]]\nsha256 = "abc"\nrole = "admin"\n'


def test_concurrent_creates_keep_every_key(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    runs = [subprocess.Popen([sys.executable, "-m", "services.apikeys", "create", "--role", "trader", "--client",
                              f"client-{n}"], env={"API_KEYS_FILE": str(keys_file), "PATH": "/usr/bin:/bin"},
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(8)]
    printed = []
    for run in runs:
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        printed.append(out.splitlines()[-1].split(" ")[0])
    stored = [spec.sha256[:16] for spec in read_key_specs(keys_file)]
    assert sorted(stored) == sorted(printed) and len(set(stored)) == 8
    assert sorted(s.client_id or "" for s in read_key_specs(keys_file)) == [f"client-{n}" for n in range(8)]


def test_an_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("")
    keys_file.chmod(0o640)
    create_key(keys_file, "admin")
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left
