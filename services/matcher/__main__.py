"""`python -m services.matcher`: run the matcher until SIGTERM or SIGINT (services/common/runner.py)."""

from __future__ import annotations

from services.common.runner import run_service
from services.matcher.app import serve
from services.matcher.settings import MatcherSettings

if __name__ == "__main__":
    run_service("matcher", MatcherSettings.from_env, serve)
