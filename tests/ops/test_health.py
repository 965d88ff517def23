"""/healthz says the process is up; /readyz says whether it can serve: both without Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.ops.conftest import get
from tests.processes import Service, free_port

pytestmark = pytest.mark.timeout(60)


async def test_http_services_are_alive_but_not_ready_without_redis(key_prefix: str, tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    ports = {"ingest": free_port(), "broadcaster": free_port()}
    env = {"REDIS_URL": dead_redis, "REDIS_KEY_PREFIX": key_prefix}
    services = [
        Service("ingest", {**env, "INGEST_PORT": str(ports["ingest"])},
                f"http://127.0.0.1:{ports['ingest']}/healthz", tmp_path / "ingest.log"),
        Service("broadcaster", {**env, "BROADCASTER_PORT": str(ports["broadcaster"])},
                f"http://127.0.0.1:{ports['broadcaster']}/healthz", tmp_path / "broadcaster.log"),
    ]
    try:
        for service in services:
            await asyncio.to_thread(service.start, 30)
        status, body = get(f"http://127.0.0.1:{ports['ingest']}/readyz")
        assert (status, json.loads(body)) == (503, {"status": "not_ready", "missing": ["redis"]})
        status, body = get(f"http://127.0.0.1:{ports['broadcaster']}/readyz")
        assert (status, json.loads(body)) == (503, {"status": "redis unreachable"})
    finally:
        for service in services:
            await asyncio.to_thread(service.stop)
