"""Matcher leases (docs/scale-out.md, "Matcher leases"): which matcher applies an instrument's commands.

An instrument's lease is the key InstrumentKeys.matcher_lease holding its holder's id (MATCHER_CONSUMER), set
with PX MATCHER_LEASE_MS and renewed by the holder; match.lua applies nothing for a caller that does not hold it.
Live matchers register in the zset `<prefix>matchers`. An instrument's preferred holder is the live matcher with
the highest crc32(symbol + ":" + id) (rendezvous hashing): instruments spread over the matchers, and a matcher
coming or going moves only the instruments it gains or held.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.common.redis_conn import AnyRedis
from services.common.scripts import (
    LEASE_RELEASE_SCRIPT,
    LEASE_RENEW_SCRIPT,
    MATCHER_REGISTRY_SCRIPT,
    LeaseReleaseArgv,
    LeaseRenewArgv,
    RegistryArgv,
    RegistryKeys,
    astuple,
)
from services.common.wire import text


def registry_key(prefix: str) -> str:
    """The zset of live matchers (member: id, score: when its entry expires, ms on Redis's clock)."""
    return f"{prefix}matchers"


def poll_interval_ms(lease_ms: int) -> float:
    """How often a matcher looks at its leases: often enough that a free lease is taken within a fraction of one."""
    return min(250.0, lease_ms / 8)


async def acquire(redis: AnyRedis, key: str, holder: str, lease_ms: int) -> bool:
    """Take the lease if it is free (SET NX PX), or take back one still ours (a restart under the same id)."""
    if await redis.set(key, holder, nx=True, px=lease_ms):
        return True
    return await renew(redis, key, holder, lease_ms)


async def renew(redis: AnyRedis, key: str, holder: str, lease_ms: int) -> bool:
    """Extend the lease by lease_ms if it is still ours; False when it expired or another holds it."""
    args = astuple(LeaseRenewArgv(holder=holder, lease_ms=str(lease_ms)))
    return bool(await LEASE_RENEW_SCRIPT(redis, (key,), args))


async def release(redis: AnyRedis, key: str, holder: str) -> bool:
    """Give the lease up if it is still ours, so that another matcher takes it at once."""
    return bool(await LEASE_RELEASE_SCRIPT(redis, (key,), astuple(LeaseReleaseArgv(holder=holder))))


async def holder_of(redis: AnyRedis, key: str) -> str | None:
    """Who holds the lease now (None: free)."""
    value = await redis.get(key)
    return None if value is None else text(value)


async def register(redis: AnyRedis, prefix: str, holder: str, ttl_ms: int) -> list[str]:
    """Refresh our entry in the registry for ttl_ms (dropping expired ones); the live matchers' ids."""
    keys = astuple(RegistryKeys(matchers=registry_key(prefix)))
    live = await MATCHER_REGISTRY_SCRIPT(redis, keys, astuple(RegistryArgv(holder=holder, ttl_ms=str(ttl_ms))))
    return sorted(text(member) for member in live)


async def unregister(redis: AnyRedis, prefix: str, holder: str) -> None:
    """Leave the registry (a graceful stop): the others then prefer one another at once."""
    await redis.zrem(registry_key(prefix), holder)


def preference(symbol: str, matchers: Iterable[str]) -> list[str]:
    """The matchers in the order they should hold `symbol`: highest crc32(symbol:id) first (ties by id)."""
    return sorted(matchers, key=lambda m: (-zlib.crc32(f"{symbol}:{m}".encode()), m))


@dataclass
class Decisions:
    """What one look at the leases decided: instruments to start, to stop (lost), to hand over (release)."""

    acquired: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)


class LeaseKeeper:
    """One matcher's view of its instruments' leases: which it holds, and what each poll should change.

    `poll()` refreshes the registry, renews held leases (every lease_ms / 4), takes the leases this matcher
    should hold and names the held ones whose preferred holder is another live matcher. The caller stops an
    instrument's loop before `release()` of it, and stops a lost one's loop at once.
    """

    def __init__(self, redis: AnyRedis, prefix: str, holder: str, lease_ms: int, lease_keys: Mapping[str, str]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.holder = holder
        self.lease_ms = lease_ms
        self.lease_keys = dict(lease_keys)  # symbol -> its lease key
        self.held: set[str] = set()
        self.live: list[str] = []
        self._free_polls: dict[str, int] = {}  # symbol -> consecutive polls that saw its lease free
        self._renewed_at = 0.0

    async def poll(self) -> Decisions:
        """One look: register, renew, acquire; what changed and what to hand over."""
        decisions = Decisions()
        self.live = await register(self.redis, self.prefix, self.holder, self.lease_ms)
        if self.holder not in self.live:  # an entry that expired between the ZADD and the read cannot be ours
            self.live.append(self.holder)
        now = time.monotonic()
        if self.held and now - self._renewed_at >= self.lease_ms / 4000:
            for symbol in sorted(self.held):
                if not await renew(self.redis, self.lease_keys[symbol], self.holder, self.lease_ms):
                    self.held.discard(symbol)
                    decisions.lost.append(symbol)
            self._renewed_at = now
        for symbol, key in self.lease_keys.items():
            order = preference(symbol, self.live)
            if symbol in self.held:
                if order[0] != self.holder:
                    decisions.release.append(symbol)
                continue
            current = await holder_of(self.redis, key)
            if current is not None and current != self.holder:
                self._free_polls.pop(symbol, None)
                continue
            # The preferred holder takes a free lease at once; the next in order after it stayed free one more
            # poll, and so on: a preferred holder that died (its registry entry not yet expired) is passed over.
            free_polls = self._free_polls.get(symbol, 0)
            if current == self.holder or order.index(self.holder) <= free_polls:
                if await acquire(self.redis, key, self.holder, self.lease_ms):
                    self._free_polls.pop(symbol, None)
                    self.held.add(symbol)
                    decisions.acquired.append(symbol)
                    if len(self.held) == 1:
                        self._renewed_at = now
                    continue
            self._free_polls[symbol] = free_polls + 1
        return decisions

    async def release(self, symbol: str) -> None:
        """Hand the lease over (the instrument's loop has stopped)."""
        self.held.discard(symbol)
        await release(self.redis, self.lease_keys[symbol], self.holder)

    def forget(self, symbol: str) -> None:
        """The lease turned out lost (match.lua answered NOLEASE): no longer ours."""
        self.held.discard(symbol)

    async def release_all(self) -> None:
        """A graceful stop: give every lease up and leave the registry, so that others take over at once."""
        for symbol in sorted(self.held):
            await self.release(symbol)
        await unregister(self.redis, self.prefix, self.holder)
