"""API keys: the bearer token's SHA-256 looked up in a table loaded once at start. Keys are never logged."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from services.common.env import SettingsError, env_str

Role = Literal["trader", "broker", "admin"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_ID_HEX = 16  # 64 bits: no two keys of a deployment share an id


class ApiKeysError(ValueError):
    """The API keys file is missing or malformed."""


class KeySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sha256: str
    role: Role
    client_id: str | None = None


class Principal(msgspec.Struct, frozen=True):
    """Who sent a request: a role, for traders the one client_id it acts for, and its key's id."""

    role: Role
    client_id: str | None = None
    # The first KEY_ID_HEX hex digits of the key's SHA-256: names the key (its rate bucket) without
    # revealing it; "" when no key was checked (AUTH_MODE=off).
    key_id: str = ""

    def may_act_for(self, client_id: str) -> bool:
        return self.role != "trader" or self.client_id == client_id

    @property
    def label(self) -> str:
        """How commands name the requester: the trader's client_id, else the role."""
        return self.client_id if self.role == "trader" and self.client_id else self.role


ADMIN = Principal(role="admin")


class KeyTable:
    """SHA-256 hex of each API key -> its principal."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_hash = principals

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <key>` header, or None for a missing or unknown key."""
        if not authorization or len(authorization) > 1024:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self._by_hash.get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest())


def load_key_table(path: Path) -> KeyTable:
    """Read the `[[key]]` entries of an API keys TOML file."""
    try:
        raw = tomllib.loads(path.read_text())
        specs = msgspec.convert(raw.get("key", []), list[KeySpec])
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ApiKeysError(f"cannot read API keys file {str(path)!r}: {exc}") from exc
    principals: dict[str, Principal] = {}
    for n, spec in enumerate(specs, start=1):
        digest = spec.sha256.lower()
        if not _HEX64.match(digest):
            raise ApiKeysError(f"{path}: key #{n}: sha256 must be 64 hex digits")
        if spec.role == "trader" and not spec.client_id:
            raise ApiKeysError(f"{path}: key #{n}: a trader key needs a client_id")
        if spec.role != "trader" and spec.client_id:
            raise ApiKeysError(f"{path}: key #{n}: only trader keys have a client_id")
        if digest in principals:
            raise ApiKeysError(f"{path}: key #{n}: the same key is listed twice")
        principals[digest] = Principal(role=spec.role, client_id=spec.client_id, key_id=digest[:KEY_ID_HEX])
    return KeyTable(principals)


AuthMode = Literal["on", "off"]


def auth_mode_from_env() -> AuthMode:
    """AUTH_MODE: "on" (default) checks API keys; "off" treats everyone as admin (experiments only)."""
    raw = env_str("AUTH_MODE", "on").strip().lower()
    if raw not in ("on", "off"):
        raise SettingsError(f"AUTH_MODE={raw!r} must be 'on' or 'off'")
    return "on" if raw == "on" else "off"


def key_table_for(auth_mode: AuthMode, path: Path) -> KeyTable | None:
    """The service's key table, or None when keys are off (AUTH_MODE=off)."""
    return load_key_table(path) if auth_mode == "on" else None
