"""The market page's files and configuration as the broadcaster serves them (issue 18; the page itself runs in
tests/browser)."""

from __future__ import annotations

import re

import httpx
import pytest

from services.broadcaster.page import STATIC_DIR
from services.broadcaster.settings import BroadcasterSettings
from services.common.env import SettingsError
from tests.broadcaster.conftest import BroadcasterFactory


async def test_the_page_its_assets_and_its_configuration(make_broadcaster: BroadcasterFactory) -> None:
    broadcaster = await make_broadcaster(ingest_public_url="http://127.0.0.1:3999")
    base = broadcaster.url.replace("ws://", "http://").removesuffix("/stream")
    async with httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self' http://127.0.0.1:3999;" in policy
        for element in ("last-price", "book-bids", "book-asks", "trades", "candles"):
            assert f'id="{element}"' in page.text
        # Every asset the page names is served from here; none from anywhere else.
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and all(a.startswith("/static/") or a == "data:," for a in assets)
        for asset in (a for a in assets if a.startswith("/static/")):
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
        for module in STATIC_DIR.glob("*.js"):
            answer = await client.get(f"/static/{module.name}")
            assert (answer.status_code, answer.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
        assert (await client.get("/static/nope.js")).status_code == 404
        assert (await client.get("/static/../page.py")).status_code == 404

        config = (await client.get("/config.json")).json()
        assert config == {
            "ingest_url": "http://127.0.0.1:3999", "levels": 20,
            "instruments": [
                {"symbol": "BTC-USD", "base": "BTC", "quote": "USD", "tick": "0.01", "lot": "0.00000001",
                 "price_places": 2},
                {"symbol": "ETH-USD", "base": "ETH", "quote": "USD", "tick": "0.05", "lot": "0.001",
                 "price_places": 2},
            ],
        }


def test_ingest_public_url_must_be_a_web_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_PORT", "4000")
    monkeypatch.delenv("INGEST_PUBLIC_URL", raising=False)
    assert BroadcasterSettings.from_env().ingest_public_url == "http://127.0.0.1:4000"
    monkeypatch.setenv("INGEST_PUBLIC_URL", "https://api.example.com/")
    assert BroadcasterSettings.from_env().ingest_public_url == "https://api.example.com"
    monkeypatch.setenv("INGEST_PUBLIC_URL", "127.0.0.1:3000")
    with pytest.raises(SettingsError, match="INGEST_PUBLIC_URL"):
        BroadcasterSettings.from_env()
