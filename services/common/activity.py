"""What a service did, as one log line every few seconds instead of one line per order on the hot path.

The audit trail of every order, trade and event is in PostgreSQL and on the streams; the log keeps the
counts (`event: "activity"`). Per-order lines stay available behind LOG_ORDERS=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

logger = logging.getLogger(__name__)


class ActivityLog:
    """Counts by name (and by reason), logged and reset every `interval_s`; nothing is logged while idle."""

    def __init__(self, what: str, interval_s: float) -> None:
        self.what = what
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {}
        self._since = time.monotonic()

    def count(self, name: str, n: int = 1, reason: str | None = None) -> None:
        """Add `n` to `name` (and to `reason` under it)."""
        self.counts[name] += n
        if reason is not None:
            by_reason = self.reasons.get(name)
            if by_reason is None:
                by_reason = self.reasons[name] = Counter()
            by_reason[reason] += n

    def flush(self) -> None:
        """Log the counts since the last line (if any) and start again."""
        now = time.monotonic()
        seconds, self._since = now - self._since, now
        if not self.counts:
            return
        counts = dict(self.counts)
        reasons = {name: dict(by_reason) for name, by_reason in self.reasons.items()}
        self.counts.clear()
        self.reasons.clear()
        summary = ", ".join(f"{n} {name}" for name, n in counts.items())
        logger.info("%s in the last %.0f s: %s", self.what, seconds, summary, extra={
            "event": "activity", "seconds": round(seconds, 3), "counts": counts, "reasons": reasons})

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `interval_s` until `stop` is set (0: never). The owner calls flush() once more when
        its work in hand is done, so the last batch or request is counted too."""
        if self.interval_s <= 0:
            return
        self._since = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            if stop.is_set():
                return
            self.flush()

    def close(self) -> None:
        """The last line, once the work in hand is done (nothing when the line is off)."""
        if self.interval_s > 0:
            self.flush()
