"""A running service's API key table: read at start, re-read when API_KEYS_FILE changes, no restart.

The file is polled (a stat every POLL_INTERVAL_S) rather than watched with inotify: it works on every
filesystem and in a container whose mount is replaced, and a stat a second costs nothing. Its device,
inode, size and mtime say whether it changed; services/apikeys replaces it by a rename, so a reader
never sees half a file. A file that no longer reads keeps the table in use, with one error line.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from services.common.auth import AuthMode, KeyTable, load_key_table
from services.common.env import SettingsError

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0  # a change is in use within this (plus the read): the contract allows 5 s
RevokeHook = Callable[[frozenset[str]], None]
Signature = tuple[int, int, int, int]


class DemoKeysRefused(SettingsError):
    """The key table holds a key of the public demo set while ALLOW_DEMO_KEYS=0."""


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class KeyFile:
    """The current KeyTable of an API keys file; watch() swaps in a new one when the file changes."""

    def __init__(self, path: Path, allow_demo: bool, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.path = path
        self.allow_demo = allow_demo
        self.poll_interval_s = poll_interval_s
        self._signature = _signature(path)
        self.table = self._checked(load_key_table(path))  # ApiKeysError, DemoKeysRefused: the service stops
        self._revoke_hooks: list[RevokeHook] = []

    def on_revoke(self, hook: RevokeHook) -> None:
        """After a reload, call hook(key_ids) with the ids of keys removed, or given another role or client."""
        self._revoke_hooks.append(hook)

    def announce(self) -> None:
        """The start's log lines: how many keys, and a warning when the public demo set is among them."""
        logger.info("loaded %d API keys from %s", len(self.table), self.path,
                    extra={"event": "api_keys_loaded", "keys": len(self.table)})
        self._warn_demo()

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last read; True if a new table is in use."""
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            table = self._checked(load_key_table(self.path))
        except SettingsError as exc:
            # The message names the file and the entry, never a key (the file holds only hashes).
            logger.error("API keys file not reloaded, the %d keys in use stay: %s", len(self.table), exc,
                         extra={"event": "api_keys_reload_failed"})
            return False
        gone = table.gone_since(self.table)
        self.table = table
        logger.info("reloaded %d API keys from %s", len(table), self.path,
                    extra={"event": "api_keys_reloaded", "keys": len(table), "revoked": sorted(gone)})
        self._warn_demo()
        if gone:
            for hook in self._revoke_hooks:
                hook(gone)
        return True

    async def watch(self) -> None:
        """Poll the file until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                self.reload_if_changed()
            except Exception:
                logger.exception("API keys reload failed", extra={"event": "api_keys_reload_failed"})

    def _checked(self, table: KeyTable) -> KeyTable:
        if table.has_demo_keys() and not self.allow_demo:
            raise DemoKeysRefused(
                f"API keys file {str(self.path)!r} holds a key of the public demo set (the keys of "
                "config/demo_api_keys.toml) and ALLOW_DEMO_KEYS=0: point API_KEYS_FILE at keys of your own "
                "(python -m services.apikeys create), or set ALLOW_DEMO_KEYS=1 for a local trial")
        return table

    def _warn_demo(self) -> None:
        if self.table.has_demo_keys():
            # Never the keys' names: they are keys too, and no key is ever logged.
            logger.warning("API keys include the public demo set (the keys of config/demo_api_keys.toml): anyone "
                           "can use them. Local runs only: set API_KEYS_FILE for anything real",
                           extra={"event": "demo_api_keys", "path": str(self.path)})


def open_key_file(auth_mode: AuthMode, path: Path, allow_demo: bool) -> KeyFile | None:
    """The service's API keys, or None when keys are off (AUTH_MODE=off); raises ApiKeysError, DemoKeysRefused."""
    return KeyFile(path, allow_demo) if auth_mode == "on" else None

