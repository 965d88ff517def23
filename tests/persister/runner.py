"""Running persister workers in the test's event loop, or as `python -m services.persister` processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from services.common.instruments import Instruments
from services.persister.app import run
from services.persister.settings import PersisterSettings
from tests.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def workers(settings: PersisterSettings, instruments: Instruments, n: int = 1) -> AsyncIterator[None]:
    """n workers (persister-1..n) sharing the group inside this event loop; stopped cleanly on exit."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run(replace(settings, consumer=f"persister-{i + 1}"), instruments, stop))
             for i in range(n)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def spawn(settings: PersisterSettings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """`python -m services.persister` configured like `settings`, logging to `log`."""
    environ = {
        **os.environ,
        "REDIS_URL": settings.redis_url, "REDIS_KEY_PREFIX": settings.key_prefix,
        "DATABASE_URL": settings.database_url, "INSTRUMENTS_FILE": str(settings.instruments_file),
        "PERSISTER_CONSUMER": settings.consumer, "PERSISTER_METRICS_PORT": str(free_port()),
        "PERSISTER_BATCH": str(settings.batch), "PERSISTER_BLOCK_MS": str(settings.block_ms),
        "PERSISTER_CLAIM_IDLE_MS": str(settings.claim_idle_ms), **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.persister"], cwd=REPO_ROOT, env=environ,
                                stdout=out, stderr=subprocess.STDOUT)
