"""`python -m services.broadcaster`: the WebSocket feed until SIGTERM or SIGINT (services/common/runner.py)."""

from __future__ import annotations

from services.broadcaster.app import serve
from services.broadcaster.settings import BroadcasterSettings
from services.common.runner import run_service

if __name__ == "__main__":
    run_service("broadcaster", BroadcasterSettings.from_env, serve)
