"""`python -m services.ingest` follows API_KEYS_FILE while it runs; the demo set is refused with ALLOW_DEMO_KEYS=0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apikeys.cli import create_key, revoke_key
from tests.conftest import TWO_INSTRUMENTS
from tests.processes import REPO_ROOT, Service, free_port

PICKUP_S = 5.0  # the contract: a change is in use within 5 s


def order(client_id: str) -> dict[str, str]:
    return {"client_id": client_id, "instrument": "BTC-USD", "side": "buy", "type": "limit", "price": "100.00",
            "quantity": "1"}


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def until(check: Callable[[], bool], what: str, within: float = PICKUP_S) -> float:
    """Poll check() until it holds; the seconds it took. Fails after `within` s."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def ingest_env(redis_url: str, key_prefix: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("API_KEYS_FILE", "ALLOW_DEMO_KEYS", "AUTH_MODE", "LOG_FILE"):
        monkeypatch.delenv(name, raising=False)
    return {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url,
            "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS), "LOG_LEVEL": "INFO"}


@pytest.fixture
def start_ingest(ingest_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(**env: str) -> Service:
        port = free_port()
        service = Service("ingest", {**ingest_env, "INGEST_PORT": str(port), **env},
                          f"http://127.0.0.1:{port}/healthz", tmp_path / f"ingest-{len(started)}.log")
        started.append(service)
        return service.start()

    yield start
    for service in started:
        assert service.stop() == 0


def test_keys_created_and_revoked_while_running_take_effect_within_5_s(
        start_ingest: Callable[..., Service], tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    broker_id, broker = create_key(keys_file, "broker")
    ingest = start_ingest(API_KEYS_FILE=str(keys_file))
    base = ingest.health_url.removesuffix("/healthz")
    with httpx.Client(base_url=base, timeout=5) as http:

        def post(key: str, client_id: str = "client-C") -> int:
            return http.post("/orders", json=order(client_id), headers={"Authorization": f"Bearer {key}"}).status_code

        assert post(broker) == 201
        trader_id, trader = create_key(keys_file, "trader", "client-C")
        until(lambda: post(trader) == 201, "the new key accepted")
        assert post(trader, "client-D") == 403  # with its role and client

        revoke_key(keys_file, trader_id)
        until(lambda: post(trader) == 401, "the revoked key refused")
        assert post(broker) == 201

        # A file that no longer parses: the keys in use stay, one error line says so (never a key).
        keys_file.write_text('[[key]]\nsha256 = "oops"\nrole = "admin"\n')
        until(lambda: any(line.get("event") == "api_keys_reload_failed" for line in log_lines(ingest.log_path)),
              "the reload error logged")
        assert post(broker) == 201 and post(trader) == 401
        admin_id, admin = create_key(tmp_path / "other.toml", "admin")
        os.replace(tmp_path / "other.toml", keys_file)  # repaired: the broker key is gone, the admin key in
        until(lambda: post(admin) == 201, "the repaired file in use")
        assert post(broker) == 401
    lines = log_lines(ingest.log_path)
    failed = [line for line in lines if line.get("event") == "api_keys_reload_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error" and "sha256 must be 64 hex digits" in failed[0]["msg"]
    reloaded = [line for line in lines if line.get("event") == "api_keys_reloaded"]
    assert [line["revoked"] for line in reloaded] == [[], [trader_id], [broker_id]]
    text = ingest.log_path.read_text()
    assert all(key not in text for key in (broker, trader, admin)) and admin_id not in text
    assert not any(line.get("event") == "demo_api_keys" for line in lines)


def test_the_demo_set_warns_at_start_and_is_refused_with_allow_demo_keys_0(
        start_ingest: Callable[..., Service], ingest_env: dict[str, str], tmp_path: Path) -> None:
    ingest = start_ingest()  # no API_KEYS_FILE: the demo set, as `make run`
    warnings = [line for line in log_lines(ingest.log_path) if line.get("event") == "demo_api_keys"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning" and "demo" in warnings[0]["msg"]

    refused = subprocess.run([sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=30,
                             env={**os.environ, **ingest_env, "INGEST_PORT": str(free_port()), "ALLOW_DEMO_KEYS": "0"})
    assert refused.returncode == 2, refused.stderr
    lines = [json.loads(x) for x in refused.stderr.splitlines() if x.startswith("{")]
    [line] = [line for line in lines if line["level"] == "error"]
    assert line["event"] == "config_error" and "ALLOW_DEMO_KEYS=0" in line["msg"] and "demo set" in line["msg"]

    # Any demo key counts, in a file of any name; keys of one's own start fine.
    mixed = tmp_path / "mixed.toml"
    mixed.write_text((REPO_ROOT / "config" / "demo_api_keys.toml").read_text())
    create_key(mixed, "admin")
    refused = subprocess.run([sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=30, env={**os.environ, **ingest_env, "API_KEYS_FILE": str(mixed),
                                                         "INGEST_PORT": str(free_port()), "ALLOW_DEMO_KEYS": "0"})
    assert refused.returncode == 2 and "ALLOW_DEMO_KEYS=0" in refused.stderr
    own = tmp_path / "own.toml"
    create_key(own, "admin")
    ingest = start_ingest(API_KEYS_FILE=str(own), ALLOW_DEMO_KEYS="0")
    assert not any(line.get("event") == "demo_api_keys" for line in log_lines(ingest.log_path))
