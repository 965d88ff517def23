"""One instrument's matcher: a call of match.lua applies the next batch of commands atomically."""

from __future__ import annotations

from services.common.groups import ensure_group
from services.common.instruments import Instrument
from services.common.keys import MATCHER_GROUP, InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.scripts import (
    MATCH_SCRIPT,
    RISK_SCALE,
    BatchResult,
    MatchArgv,
    MatchKeys,
    astuple,
    batch_result,
)
from services.matcher.risk_state import ensure_risk_state


class InstrumentMatcher:
    """Drives match.lua for one instrument."""

    def __init__(self, redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys, consumer: str,
                 batch_size: int) -> None:
        self.redis = redis
        self.instrument = instrument
        self.keys = keys
        self._script_keys = astuple(MatchKeys.of(keys))
        self._script_args = astuple(MatchArgv(
            group=MATCHER_GROUP, consumer=consumer, max_commands=str(batch_size), symbol=instrument.symbol,
            price_multiplier=str(instrument.price_mult), price_decimals=str(instrument.price_places),
            quantity_multiplier=str(instrument.qty_mult), quantity_decimals=str(instrument.lot_places),
            key_prefix=keys.prefix, price_band_bp=str(instrument.risk.price_band_bp),
            market_protection_bp=str(instrument.risk.market_protection_bp),
            max_open_orders=str(instrument.risk.max_open_orders), risk_scale=str(RISK_SCALE), holder=consumer,
        ))
        self.holder = consumer

    async def prepare(self) -> None:
        await ensure_group(self.redis, self.keys.orders, MATCHER_GROUP)
        await ensure_risk_state(self.redis, self.instrument, self.keys)
        await MATCH_SCRIPT.load(self.redis)

    async def take_lease(self) -> None:
        """Hold the instrument's lease with no expiry, whoever held it: for a driver that runs alone (tests,
        benchmarks), never beside matcher processes, which take, renew and release leases (lease.py)."""
        await self.redis.set(self.keys.matcher_lease, self.holder)

    async def step(self) -> BatchResult:
        """Apply up to batch_size waiting commands; applied == 0 when none were waiting. ResponseError NOLEASE
        when this matcher does not hold the instrument's lease."""
        reply = await MATCH_SCRIPT(self.redis, self._script_keys, self._script_args)
        return batch_result(reply)

    async def drain(self) -> int:
        """Apply every waiting command; returns how many (tests and recovery use this)."""
        total = 0
        while (result := await self.step()).applied:
            total += result.applied
        return total

    async def wait_for_commands(self, after_id: str, block_ms: int) -> None:
        """Block until the orders stream has an entry after `after_id`, or block_ms passes."""
        await self.redis.xread({self.keys.orders: after_id}, count=1, block=block_ms)
