"""`python -m services.persister`: one persister worker until SIGTERM or SIGINT (services/common/runner.py)."""

from __future__ import annotations

from services.common.runner import run_service
from services.persister.app import serve
from services.persister.settings import PersisterSettings

if __name__ == "__main__":
    run_service("persister", PersisterSettings.from_env, serve)
