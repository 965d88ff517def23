"""API keys: the bearer token's SHA-256 looked up in a table read from API_KEYS_FILE. Keys are never logged.

This module owns the file's format: read_key_specs() validates it, format_key_file() writes it
(services/apikeys edits the file; services/common/key_watch.py re-reads it in the running services).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from services.common.env import SettingsError, env_str

Role = Literal["trader", "broker", "admin"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_ID_HEX = 16  # 64 bits: no two keys of a deployment share an id

# The demo set of config/demo_api_keys.toml (README, CONTRACT.md): public, so a table holding any of
# them is recognised by these hashes wherever its file lives (ALLOW_DEMO_KEYS).
DEMO_KEYS = ("demo-key-A", "demo-key-B", "demo-broker", "demo-admin")
DEMO_KEY_HASHES = frozenset(hashlib.sha256(key.encode()).hexdigest() for key in DEMO_KEYS)


class ApiKeysError(SettingsError):
    """The API keys file is missing or malformed (a configuration error: the service does not start)."""


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


def key_id(digest: str) -> str:
    """A key's id: the first KEY_ID_HEX hex digits of its SHA-256 (names it in logs, buckets, the CLI)."""
    return digest[:KEY_ID_HEX]


class KeyTable:
    """SHA-256 hex of each API key -> its principal."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_hash = principals

    @classmethod
    def from_specs(cls, specs: list[KeySpec]) -> KeyTable:
        """The table of validated specs (see read_key_specs)."""
        return cls({s.sha256: Principal(role=s.role, client_id=s.client_id, key_id=key_id(s.sha256)) for s in specs})

    def __len__(self) -> int:
        return len(self._by_hash)

    def has_demo_keys(self) -> bool:
        """Whether any key of the public demo set authenticates here."""
        return not DEMO_KEY_HASHES.isdisjoint(self._by_hash)

    def gone_since(self, old: KeyTable) -> frozenset[str]:
        """Ids of `old`'s keys that this table no longer has, or has with another role or client."""
        return frozenset(p.key_id for digest, p in old._by_hash.items() if self._by_hash.get(digest) != p)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <key>` header, or None for a missing or unknown key."""
        if not authorization or len(authorization) > 1024:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self._by_hash.get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest())


def read_key_specs(path: Path) -> list[KeySpec]:
    """The `[[key]]` entries of an API keys TOML file, validated, hashes in lower case."""
    try:
        raw = tomllib.loads(path.read_text())
        specs = msgspec.convert(raw.get("key", []), list[KeySpec])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ApiKeysError(f"cannot read API keys file {str(path)!r}: {exc}") from exc
    seen: set[str] = set()
    valid: list[KeySpec] = []
    for n, spec in enumerate(specs, start=1):
        digest = spec.sha256.lower()
        if not _HEX64.match(digest):
            raise ApiKeysError(f"{path}: key #{n}: sha256 must be 64 hex digits")
        if spec.role == "trader" and not spec.client_id:
            raise ApiKeysError(f"{path}: key #{n}: a trader key needs a client_id")
        if spec.role != "trader" and spec.client_id:
            raise ApiKeysError(f"{path}: key #{n}: only trader keys have a client_id")
        if digest in seen:
            raise ApiKeysError(f"{path}: key #{n}: the same key is listed twice")
        seen.add(digest)
        valid.append(KeySpec(sha256=digest, role=spec.role, client_id=spec.client_id))
    return valid


def load_key_table(path: Path) -> KeyTable:
    """Read the `[[key]]` entries of an API keys TOML file."""
    return KeyTable.from_specs(read_key_specs(path))


_FILE_HEADER = """\
# API keys: only each key's SHA-256 is stored (python -m services.apikeys create | revoke | list).
# Running services re-read this file within seconds of a change.
"""


def format_key_file(specs: list[KeySpec]) -> str:
    """The TOML text of an API keys file holding `specs`; reading it back gives the same specs."""
    entries = []
    for spec in specs:
        lines = ["[[key]]", f"sha256 = {_toml_string(spec.sha256)}", f"role = {_toml_string(spec.role)}"]
        if spec.client_id is not None:
            lines.append(f"client_id = {_toml_string(spec.client_id)}")
        entries.append("\n".join(lines) + "\n")
    text = _FILE_HEADER + "".join("\n" + entry for entry in entries)
    # A client id TOML or UTF-8 cannot hold must fail here, not in every service that reads the file.
    try:
        text.encode()
        same = msgspec.convert(tomllib.loads(text).get("key", []), list[KeySpec]) == specs
    except (UnicodeEncodeError, tomllib.TOMLDecodeError):
        same = False
    if not same:
        raise ApiKeysError("these API keys do not survive a round trip through the file's TOML")
    return text


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's (\\u and four hex digits, \\", \\\\ and the short ones)."""
    return json.dumps(value, ensure_ascii=False)


AuthMode = Literal["on", "off"]


def auth_mode_from_env() -> AuthMode:
    """AUTH_MODE: "on" (default) checks API keys; "off" treats everyone as admin (experiments only)."""
    raw = env_str("AUTH_MODE", "on").strip().lower()
    if raw not in ("on", "off"):
        raise SettingsError(f"AUTH_MODE={raw!r} must be 'on' or 'off'")
    return "on" if raw == "on" else "off"


def allow_demo_keys_from_env() -> bool:
    """ALLOW_DEMO_KEYS: "0" refuses a table holding a demo key (the Docker image's default); "1" or unset allows it."""
    raw = env_str("ALLOW_DEMO_KEYS", "").strip()
    if raw not in ("", "0", "1"):
        raise SettingsError(f"ALLOW_DEMO_KEYS={raw!r} must be '0' or '1'")
    return raw != "0"
