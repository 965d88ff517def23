"""One JSON line per log record, so operators can grep and ship logs without parsing prose."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path

import msgspec

_ENCODER = msgspec.json.Encoder()
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as {"ts", "level", "service", "logger", "msg", ...extra fields}."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode()


def setup_logging(service: str, level: str = "INFO", file: str | None = None) -> None:
    """Send JSON lines to `file` (LOG_FILE) for the whole process, or to stderr without one.

    The file is written by this process itself, not through a process manager's pipe, and reopened when
    logrotate moves it (WatchedFileHandler). A line (up to 8 KiB) is one write(2) in append mode, so the
    persister's workers share one file. OSError if it cannot be opened.
    """
    handler: logging.Handler
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
