"""What create, revoke and list do to the keys of a file; the command line is __main__.py's."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.apikeys import store
from services.common.auth import KeySpec, Role, key_id

KEY_BYTES = 32  # 256 random bits: 43 URL-safe characters


class UnknownKeyId(LookupError):
    """No key of the file has this id."""


@dataclass(frozen=True, slots=True)
class NewKey:
    """A created key: shown once, then only its hash exists."""

    key_id: str
    key: str
    spec: KeySpec


def create(path: Path, role: Role, client_id: str | None) -> NewKey:
    """Add a new random key of `role` (for `client_id`, trader keys only) to the file; only its SHA-256 is stored."""
    made: list[NewKey] = []

    def add(specs: list[KeySpec]) -> list[KeySpec]:
        taken = {key_id(s.sha256) for s in specs}
        while True:  # a 64-bit id collision is as good as impossible, but an id must name one key
            key = secrets.token_urlsafe(KEY_BYTES)
            digest = hashlib.sha256(key.encode()).hexdigest()
            if key_id(digest) not in taken:
                break
        spec = KeySpec(sha256=digest, role=role, client_id=client_id)
        made.append(NewKey(key_id(digest), key, spec))
        return [*specs, spec]

    store.update(path, add)
    return made[0]


def revoke(path: Path, wanted: str) -> KeySpec:
    """Remove the key with id `wanted` from the file; UnknownKeyId if there is none."""
    wanted = wanted.strip().lower()
    removed: list[KeySpec] = []

    def drop(specs: list[KeySpec]) -> list[KeySpec]:
        kept = [s for s in specs if key_id(s.sha256) != wanted]
        removed.extend(s for s in specs if key_id(s.sha256) == wanted)
        if not removed:
            raise UnknownKeyId(wanted)
        return kept

    store.update(path, drop)
    return removed[0]


def list_keys(path: Path) -> list[KeySpec]:
    """The file's keys, in file order (a missing file has none)."""
    return store.read(path)
