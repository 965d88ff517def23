"""The market page in a real browser against a whole engine (issue 18): live without a reload, no console
error, no request off the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TWO_INSTRUMENTS
from tests.e2e.engine import RunningEngine, http_ok
from tests.processes import REPO_ROOT

pytestmark = pytest.mark.slow

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# MARKET_PAGE_SCREENSHOT=1 also writes the README's picture; by default a run leaves the working tree alone.
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "market-page.png"


@pytest.fixture
def engine_instruments() -> Path:
    """BTC-USD and ETH-USD, so the picker has a choice."""
    return TWO_INSTRUMENTS


def place(engine: RunningEngine, key: str, **order: str) -> dict[str, Any]:
    body = {"instrument": "BTC-USD", "type": "limit", **order}
    request = urllib.request.Request(f"{engine.ingest}/orders", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 201
        return dict(json.loads(answer.read()))


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not {what} within {timeout}s")


def texts(browser: Any, selector: str) -> list[str]:
    """The text of each child of `selector`, cells joined by spaces."""
    script = ("return [...document.querySelector(arguments[0]).children]"
              ".map(c => [...c.children].map(s => s.textContent).join(' '))")
    return list(browser.execute_script(script, selector))


def requested_urls(performance_log: list[dict[str, Any]]) -> list[str]:
    """Every URL the page asked for: requests and WebSockets, from the CDP Network events."""
    urls = []
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(params["url"])
    return urls


def test_the_page_follows_the_market_live(browser: Any, running: RunningEngine, tmp_path: Path) -> None:
    from selenium.webdriver.support.select import Select  # installed: the browser fixture skips otherwise

    page = f"http://127.0.0.1:{running.env['BROADCASTER_PORT']}/"
    running.wait_until(lambda: http_ok(f"{page}readyz"), 20, "broadcaster ready")
    browser.get(page)
    wait_for(lambda: browser.find_element("id", "status").text == "live", "connected")
    wait_for(lambda: browser.execute_script("return document.querySelector('#book-seq').textContent")
             .startswith("book seq"), "book snapshot")
    assert browser.find_element("id", "instrument").get_attribute("value") == "BTC-USD"
    assert texts(browser, "#book-bids") == texts(browser, "#trades") == []

    # Without a reload: a resting ask, two bids, then a buy that takes part of the ask.
    place(running, "demo-key-B", client_id="client-B", side="sell", price="50010.00", quantity="1.5")
    place(running, "demo-key-A", client_id="client-A", side="buy", price="49990.00", quantity="0.25")
    place(running, "demo-key-A", client_id="client-A", side="buy", price="49980.50", quantity="0.125")
    wait_for(lambda: texts(browser, "#book-bids") == ["49990.00 0.25 0.25", "49980.50 0.125 0.375"],
             "the new bids on the ladder")
    assert texts(browser, "#book-asks") == ["50010.00 1.5 1.5"]
    place(running, "demo-key-A", client_id="client-A", side="buy", price="50010.00", quantity="0.5")
    wait_for(lambda: browser.find_element("id", "last-price").text == "50010.00", "the trade's price")
    wait_for(lambda: len(texts(browser, "#trades")) == 1, "the trade on the tape")
    assert texts(browser, "#trades")[0].endswith(" 50010.00 0.5")
    wait_for(lambda: texts(browser, "#book-asks") == ["50010.00 1 1"], "the ask reduced by the fill")

    # A second trade goes on top of the tape (newest first), still without a reload.
    place(running, "demo-key-B", client_id="client-B", side="sell", price="49990.00", quantity="0.05")
    wait_for(lambda: browser.find_element("id", "last-price").text == "49990.00", "the second trade's price")
    wait_for(lambda: [t.split(" ", 1)[1] for t in texts(browser, "#trades")] == ["49990.00 0.05", "50010.00 0.5"],
             "both trades, newest first")
    wait_for(lambda: texts(browser, "#book-bids")[:1] == ["49990.00 0.2 0.2"], "the bid reduced by the fill")
    stats = browser.execute_script("return window.marketPage")
    assert stats["connects"] == 1  # the same page throughout: no reload, no reconnect
    assert stats["resyncs"] == 0 and stats["errors"] == []
    assert browser.find_element("css selector", "#candles canvas") is not None

    screenshot = tmp_path / "market-page.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("MARKET_PAGE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

    # A delta out of sequence (one went missing): the page asks for a fresh snapshot and shows the same book.
    ladder = texts(browser, "#book-bids"), texts(browser, "#book-asks")
    seq = int(browser.find_element("id", "book-seq").text.removeprefix("book seq "))
    redraws = browser.execute_script("return window.marketPage.redraws")
    browser.execute_script("window.marketPage.feed.dispatch(arguments[0])", {
        "type": "orderbook_delta", "instrument": "BTC-USD", "seq": seq + 2, "changes": [["buy", "1.00", "1"]]})
    wait_for(lambda: browser.execute_script("return window.marketPage.snapshots") == 2, "a fresh snapshot")
    wait_for(lambda: browser.execute_script("return window.marketPage.redraws") > redraws
             and browser.find_element("id", "book-seq").text == f"book seq {seq}", "the book redrawn")
    assert (texts(browser, "#book-bids"), texts(browser, "#book-asks")) == ladder
    assert browser.execute_script("return window.marketPage.resyncs") == 1

    # The broadcaster dies: the page reconnects by itself with since_seq, and the trade made while it was
    # away reaches the tape exactly once.
    for pid in running.pids("broadcaster"):
        os.kill(pid, signal.SIGKILL)
    place(running, "demo-key-B", client_id="client-B", side="sell", price="49990.00", quantity="0.15")
    wait_for(lambda: browser.execute_script("return window.marketPage.connects") == 2, "reconnected", 30)
    wait_for(lambda: [t.split(" ", 1)[1] for t in texts(browser, "#trades")]
             == ["49990.00 0.15", "49990.00 0.05", "50010.00 0.5"], "the trade made while disconnected, once")
    wait_for(lambda: texts(browser, "#book-bids")[:1] == ["49990.00 0.05 0.05"], "the book from the new snapshot")
    # While the broadcaster was down, chromium logs each refused reconnect; nothing else may be an error.
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and "WebSocket connection to" not in entry["message"]]
    assert errors == []

    # The picker: another instrument's book and tape, then back, each from its own snapshot and history.
    assert [o.get_attribute("value") for o in browser.find_elements("css selector", "#instrument option")] \
        == ["BTC-USD", "ETH-USD"]
    Select(browser.find_element("id", "instrument")).select_by_value("ETH-USD")
    place(running, "demo-key-A", client_id="client-A", instrument="ETH-USD", side="buy", price="2000.05",
          quantity="0.5")
    wait_for(lambda: texts(browser, "#book-bids") == ["2000.05 0.5 0.5"], "the ETH-USD book")
    assert (texts(browser, "#trades"), browser.find_element("id", "last-price").text) == ([], "-")
    assert browser.current_url.endswith("#ETH-USD")
    browser.execute_script("location.hash = 'BTC-USD'")
    wait_for(lambda: len(texts(browser, "#trades")) == 3 and texts(browser, "#book-bids")[:1]
             == ["49990.00 0.05 0.05"], "the BTC-USD book and tape again")
    assert browser.find_element("id", "last-price").text == "49990.00"
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []

    urls = requested_urls(browser.get_log("performance"))
    assert any(url.endswith("/stream") for url in urls)
    assert any("/analytics/BTC-USD/candles" in url for url in urls)  # ingest, across origins
    off_machine = [url for url in urls
                   if not url.startswith("data:") and urllib.parse.urlsplit(url).hostname not in LOCAL_HOSTS]
    assert off_machine == []
