"""`python -m services.ingest`: the ingest HTTP API until SIGTERM or SIGINT (services/common/runner.py)."""

from __future__ import annotations

from services.common.runner import run_service
from services.ingest.app import serve
from services.ingest.settings import IngestSettings

if __name__ == "__main__":
    run_service("ingest", IngestSettings.from_env, serve)
