"""The data directory's record of which server version made it, checked before a server starts on it."""

from __future__ import annotations

from pathlib import Path

from services.runtime.binaries import major


class IncompatibleData(RuntimeError):
    """The data directory was made by a server version this engine cannot run on it."""


def record_path(data_dir: Path, server: str) -> Path:
    return data_dir / f"{server}.version"


def recorded(data_dir: Path, server: str) -> str | None:
    path = record_path(data_dir, server)
    return path.read_text().strip() if path.is_file() else None


def record(data_dir: Path, server: str, version: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    record_path(data_dir, server).write_text(version + "\n")


def check_postgres(pgdata: Path, data_dir: Path, shipped: str) -> None:
    """Refuse a PostgreSQL data directory of another major version (PostgreSQL itself would only crash)."""
    marker = pgdata / "PG_VERSION"
    if not marker.is_file():
        return
    made_by = int(marker.read_text().strip())
    if made_by == major(shipped):
        return
    full = recorded(data_dir, "postgres") or str(made_by)
    raise IncompatibleData(
        f"{pgdata} was made by PostgreSQL {full}, and this engine ships PostgreSQL {shipped}: a PostgreSQL "
        f"server cannot open another major version's data directory. To keep the data, dump it with "
        f"PostgreSQL {made_by}'s pg_dumpall, run `make clean-data`, start the engine and restore the dump "
        f"with `make psql`; or set DATABASE_URL to a PostgreSQL {made_by} server that serves it. "
        f"`make clean-data` alone deletes every stored order and trade.")


def check_redis(redis_dir: Path, data_dir: Path, shipped: str) -> None:
    """Refuse an AOF written by a newer major version than the shipped server (it may not load it)."""
    made_by = recorded(data_dir, "redis")
    if made_by is None or not any(redis_dir.iterdir()) or major(made_by) <= major(shipped):
        return
    raise IncompatibleData(
        f"{redis_dir} was written by {made_by}, newer than this engine's {shipped}, which may not read it. "
        f"Install the engine version that wrote it, or `make clean-data` (deletes the live book and streams; "
        f"PostgreSQL keeps every persisted order and trade, and the book is rebuilt from it).")
