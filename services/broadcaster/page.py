"""The market page (CONTRACT.md, "Market page"): `/`, its assets under `/static/`, and `/config.json`.

The page is plain files in `static/`: nothing is built at run time and nothing is fetched from elsewhere.
`/config.json` is the one thing the page cannot know by itself: where ingest's read API is and which
instruments are configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from services.broadcaster.settings import BroadcasterSettings
from services.common.money import plain

STATIC_DIR = Path(__file__).with_name("static")
LADDER_LEVELS = 20  # levels a side on the ladder (CONTRACT.md)


def page_config(settings: BroadcasterSettings) -> dict[str, Any]:
    """What the page needs from the configuration: ingest's URL and each instrument's increments."""
    return {
        "ingest_url": settings.ingest_public_url,
        "levels": LADDER_LEVELS,
        "instruments": [
            {"symbol": i.symbol, "base": i.base, "quote": i.quote, "tick": plain(i.tick), "lot": plain(i.lot),
             "price_places": i.tick_places}
            for i in settings.instruments.values()
        ],
    }


def content_security_policy(settings: BroadcasterSettings) -> str:
    """The browser itself refuses any request off this origin and ingest's: nothing leaves the machine."""
    # 'self' covers the page's own ws:// /stream in current browsers; inline styles are what the chart
    # library sets on its canvases' containers.
    return (f"default-src 'self'; connect-src 'self' {settings.ingest_public_url}; img-src 'self' data:; "
            "style-src 'self' 'unsafe-inline'; script-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def page_routes(settings: BroadcasterSettings) -> list[BaseRoute]:
    """The routes of the page, to go beside /stream and the ops endpoints."""
    config = page_config(settings)
    headers = {"Content-Security-Policy": content_security_policy(settings), "Cache-Control": "no-cache"}

    async def index(_: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=headers)

    async def config_json(_: Request) -> Response:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    return [
        Route("/", index, methods=["GET"]),
        Route("/config.json", config_json, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
