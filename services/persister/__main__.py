"""`python -m services.persister`: one worker of the persister group (Redis Streams -> PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.env import SettingsError, env_str
from services.common.instruments import InstrumentError, load_instruments
from services.common.logs import setup_logging
from services.persister.app import run
from services.persister.settings import PersisterSettings

logger = logging.getLogger("services.persister")


def main() -> int:
    # LOG_LEVEL=WARNING also silences the per-trade lines (about 27 µs each).
    setup_logging("persister", env_str("LOG_LEVEL", "INFO"))
    try:
        settings = PersisterSettings.from_env()
        instruments = load_instruments(settings.instruments_file)
    except (SettingsError, InstrumentError) as exc:
        logger.error("cannot start: %s", exc, extra={"event": "config_error"})
        return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(settings, instruments))
    else:
        uvloop.run(run(settings, instruments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
