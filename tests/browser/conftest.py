"""Fixtures of the browser tests: Debian's headless chromium driven by selenium, and the whole-engine fixtures."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

# The whole engine as tests/e2e starts it (`running`, on the test's own prefix, database and ports).
from tests.e2e.conftest import engine_db, engine_instruments, running

__all__ = ["browser", "engine_db", "engine_instruments", "running"]

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium with its console and network (CDP performance) logs kept; skips without one."""
    binary = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no chromium or chromedriver on PATH: apt-get install -y chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: make install-dev")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,960",
                     "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # An explicit driver path: selenium's own manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
