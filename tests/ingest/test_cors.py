"""CORS on a running ingest: the market page's origins may read across origins, no other origin may (issue 18)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from services.common.env import SettingsError
from services.ingest.settings import cors_origins_from_env
from tests.conftest import TWO_INSTRUMENTS
from tests.ingest.conftest import DEMO_KEYS
from tests.processes import Service, free_port

PAGE = "http://127.0.0.1:4001"  # the broadcaster's origin in this test (BROADCASTER_PORT=4001)


@pytest.fixture
def ingest(redis_url: str, key_prefix: str, database_url: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ingest process whose CORS_ORIGINS default follows BROADCASTER_PORT; its base URL."""
    for name in ("API_KEYS_FILE", "ALLOW_DEMO_KEYS", "AUTH_MODE", "LOG_FILE", "CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url,
           "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS), "API_KEYS_FILE": str(DEMO_KEYS), "INGEST_PORT": str(port),
           "BROADCASTER_PORT": "4001", "LOG_LEVEL": "WARNING"}
    service = Service("ingest", env, f"http://127.0.0.1:{port}/healthz", tmp_path / "ingest.log").start()
    yield f"http://127.0.0.1:{port}"
    service.stop()


def request(url: str, method: str = "GET", **headers: str) -> tuple[int, Message]:
    req = urllib.request.Request(url, method=method, headers={k.replace("_", "-"): v for k, v in headers.items()})
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, answer.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def test_the_page_origin_is_echoed_on_reads(ingest: str) -> None:
    for path in ("/orderbook?instrument=BTC-USD", "/trades?instrument=BTC-USD&limit=5",
                 "/analytics/BTC-USD/ticker", "/analytics/BTC-USD/candles?interval=1m"):
        status, headers = request(ingest + path, Origin=PAGE)
        assert status == 200, path
        assert headers["Access-Control-Allow-Origin"] == PAGE, path
        assert headers["Vary"] == "Origin", path
    # Errors carry it too, so the page can read the message of a 422.
    status, headers = request(ingest + "/orderbook?instrument=NOPE", Origin="http://localhost:4001")
    assert (status, headers["Access-Control-Allow-Origin"]) == (422, "http://localhost:4001")


def test_another_origin_is_not_allowed(ingest: str) -> None:
    for origin in ("http://evil.example", "http://127.0.0.1:3001", "null"):
        status, headers = request(ingest + "/orderbook?instrument=BTC-USD", Origin=origin)
        assert status == 200  # the server answers; the browser withholds it from the page
        assert headers["Access-Control-Allow-Origin"] is None, origin
    status, headers = request(ingest + "/trades", "OPTIONS", Origin="http://evil.example",
                              Access_Control_Request_Method="GET")
    assert status == 400
    assert headers["Access-Control-Allow-Origin"] is None


def test_a_preflight_allows_reads_only(ingest: str) -> None:
    status, headers = request(ingest + "/trades", "OPTIONS", Origin=PAGE, Access_Control_Request_Method="GET")
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, PAGE)
    assert headers["Access-Control-Allow-Methods"] == "GET"
    status, _ = request(ingest + "/orders/x/cancel", "OPTIONS", Origin=PAGE, Access_Control_Request_Method="POST")
    assert status == 400
    # POST /orders is answered outside the app: a preflight there gets no CORS grant at all.
    status, headers = request(ingest + "/orders", "OPTIONS", Origin=PAGE, Access_Control_Request_Method="POST",
                              Access_Control_Request_Headers="authorization,content-type")
    assert status == 405
    assert headers["Access-Control-Allow-Origin"] is None


def test_cors_origins_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORS_ORIGINS", raising=False)
    monkeypatch.delenv("BROADCASTER_PORT", raising=False)
    assert cors_origins_from_env() == ("http://127.0.0.1:3001", "http://localhost:3001")
    monkeypatch.setenv("CORS_ORIGINS", " https://market.example.com/ ,http://10.0.0.5:3001")
    assert cors_origins_from_env() == ("https://market.example.com", "http://10.0.0.5:3001")
    for bad in ("*", "http://*.example.com", "market.example.com", "http://a.example/path"):
        monkeypatch.setenv("CORS_ORIGINS", bad)
        with pytest.raises(SettingsError, match="CORS_ORIGINS"):
            cors_origins_from_env()
