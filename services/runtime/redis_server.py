"""The engine's own Redis-compatible server: its command line and data directory."""

from __future__ import annotations

from services.runtime import binaries, datadir
from services.runtime.settings import RuntimeSettings


def prepare(settings: RuntimeSettings) -> None:
    """Make the data directory, refuse data from a newer server, record the server version."""
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    shipped = binaries.redis_version()
    datadir.check_redis(settings.redis_dir, settings.data_dir, shipped)
    datadir.record(settings.data_dir, "redis", shipped)


def argv(settings: RuntimeSettings) -> list[str]:
    """The server's command line: loopback only, AOF on and fsynced as the settings say, no RDB snapshots."""
    return [
        str(binaries.redis_server()),
        "--port", str(settings.redis_port),
        "--bind", "127.0.0.1",
        "--dir", str(settings.redis_dir),
        "--appendonly", "yes",
        # `always`: the write is on disk before the reply, so before ingest answers 201.
        "--appendfsync", settings.appendfsync,
        # RDB snapshots alone would restore an older state; with the AOF they add nothing.
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(settings.log_dir / "redis.log"),
        "--loglevel", "notice",
    ]
