"""Fixtures of the whole-engine tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def own_run_dir() -> Iterator[Path]:
    """ENGINE_RUN_DIR of an engine that runs its own servers: a directory of its own, not under pytest's.

    Under root the engine's PostgreSQL runs as `nobody`, which must pass through every directory above its
    data: the engine grants that (o+x), but any other pytest session starting on the machine resets
    /tmp/pytest-of-<user> to 0700, which would lock the running server out of its own data.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="engine-run-"))
    yield run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
