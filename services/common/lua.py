"""Content-addressed Lua scripts: EVALSHA, loading the script again when Redis answers NOSCRIPT.

Scripts rather than a Functions library because FUNCTION LOAD REPLACE is server-wide: a test (or a
second engine with other code) would replace a live engine's functions. A script's SHA is its content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from services.common.redis_conn import AnyRedis


class LuaScript:
    """One Lua script shipped as a .lua file inside a services package, after its generated `prelude`
    (services/common/scripts.py: the names of its KEYS and ARGV positions)."""

    def __init__(self, package: str, filename: str, prelude: str = "") -> None:
        self.name = filename
        self.source = prelude + resources.files(package).joinpath(filename).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def load(self, redis: AnyRedis) -> None:
        await redis.script_load(self.source)

    async def is_loaded(self, redis: AnyRedis) -> bool:
        return bool((await redis.script_exists(self.sha))[0])

    async def __call__(self, redis: AnyRedis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: nothing ran, so loading and retrying is safe.
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
