"""The API keys file, changed under a lock and replaced atomically, so running services never read half of it.

Two writers at once would each read the file, add their key and write: the second would drop the first's
key. flock on a lock file beside it (the file itself is replaced by every write, so it cannot carry the
lock) makes each read-change-write whole. Readers need no lock: a rename replaces the file in one step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from services.common.auth import KeySpec, format_key_file, read_key_specs

NEW_FILE_MODE = 0o600  # hashes only, but nobody else needs to read them


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of `path` (blocks until another writer is done)."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, NEW_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read(path: Path) -> list[KeySpec]:
    """The file's keys; none when it does not exist yet."""
    return read_key_specs(path) if path.exists() else []


def write(path: Path, specs: list[KeySpec]) -> None:
    """Replace the file with one holding `specs`: a temporary file beside it, fsynced, then renamed over it."""
    text = format_key_file(specs)
    try:
        mode = os.stat(path).st_mode & 0o777  # an existing file keeps its permissions
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def update(path: Path, change: Callable[[list[KeySpec]], list[KeySpec]]) -> None:
    """Under the lock: read the keys, write change(keys). The file (and its directory) is created if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(path):
        write(path, change(read(path)))
