"""Failed-authentication counters: the failures of one client address in its current window,
and how long until that window, or the block that ended it, runs out.

A window opens with an address's first failure and lasts `window_ms`. The failure that
passes `max_failures` turns it into a block of `block_ms` from that moment; failures counted
later (by a replica that had not heard of the block yet) do not lengthen it, so a block
ends when it said it would. Both backends decide alike. The Redis one is one atomic script
per failure (INCR, the expiry, PTTL: one round trip), shared by every replica, on one
Redis server or a Redis Cluster, with the rate limiter's deadline, breakers and failover
(`limiter.nodes`); the in-process one is also the Redis one's fallback.

Only failures are counted, so neither backend is ever asked on behalf of a valid key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import AuthFailureConfig, RateLimitConfig
from gateway.limiter.nodes import RedisNodes, Script

# Addresses tracked in process before the first sweep of expired ones, and at most: past
# that the oldest are forgotten (a flood of addresses cannot grow memory without bound).
_FIRST_SWEEP = 1024
MAX_TRACKED = 100_000

# KEYS: the address's key. ARGV: window ms, block ms, max failures.
# Returns: the count, and ms until the window or the block ends.
RECORD = """
local n = redis.call('INCR', KEYS[1])
if n == tonumber(ARGV[3]) + 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {n, redis.call('PTTL', KEYS[1])}
"""
_RECORD = Script.of(RECORD)


@dataclass(frozen=True, slots=True)
class FailureRule:
    max_failures: int
    window_ms: int
    block_ms: int

    @classmethod
    def of(cls, config: AuthFailureConfig) -> FailureRule:
        return cls(config.max_failures, round(config.window_s * 1000), round(config.block_s * 1000))


@dataclass(frozen=True, slots=True)
class FailureCount:
    count: int
    # Until the window or the block ends.
    ttl_ms: int


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class MemoryFailureCounter:
    """Exact for one process; every call completes without yielding, so it is atomic."""

    def __init__(
        self,
        rule: FailureRule,
        clock: Callable[[], float] = _monotonic_ms,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._rule = rule
        self._clock = clock
        self._max_tracked = max_tracked
        # Address key -> [failures, expiry ms], oldest window first.
        self._entries: OrderedDict[str, list[float]] = OrderedDict()
        self._sweep_at = _FIRST_SWEEP

    def record(self, key: str) -> FailureCount:
        now = self._clock()
        rule = self._rule
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            self._entries.pop(key, None)
            self._make_room(now)
            entry = self._entries[key] = [0, now + rule.window_ms]
        entry[0] += 1
        if entry[0] == rule.max_failures + 1:
            entry[1] = now + rule.block_ms
        return FailureCount(int(entry[0]), max(int(entry[1] - now), 1))

    def __len__(self) -> int:
        return len(self._entries)

    def _make_room(self, now: float) -> None:
        """Sweeps out ended windows when the entries have doubled since the last sweep
        (amortized constant time), and forgets the oldest window past max_tracked."""
        entries = self._entries
        if len(entries) >= self._sweep_at:
            for key in [key for key, (_, expiry) in entries.items() if expiry <= now]:
                del entries[key]
            self._sweep_at = max(_FIRST_SWEEP, 2 * len(entries))
        while len(entries) >= self._max_tracked:
            entries.popitem(last=False)


class RedisFailureCounter:
    """The shared count (one server or a cluster: see `limiter.nodes`). A call that misses
    its deadline may still run on Redis later: it then counts a failure that did happen,
    which is right, so no deadline is sent along."""

    def __init__(self, config: RateLimitConfig, url: str, rule: FailureRule) -> None:
        self._rule = rule
        self._args = (rule.window_ms, rule.block_ms, rule.max_failures)
        self._prefix = f"{config.key_prefix}:authfail:"
        self._nodes = RedisNodes(
            url,
            timeout_s=config.redis_timeout_ms / 1000.0,
            retry_interval_s=config.redis_retry_interval_s,
            scripts=(_RECORD,),
        )

    def redis_key(self, key: str) -> str:
        return self._prefix + key

    async def record(self, key: str) -> FailureCount:
        """Count one failure; raises LimiterUnavailable when Redis cannot answer in time."""
        (count, ttl_ms), _ = await self._nodes.evalsha(
            _RECORD, [self.redis_key(key)], list(self._args)
        )
        return FailureCount(int(count), max(int(ttl_ms), 1))

    async def warm_up(self) -> None:
        """Load the script (on a cluster: read the slot map, and load it on every master)
        before the first failure needs it; never raises."""
        await self._nodes.warm_up(mark_failure=False)

    async def close(self) -> None:
        await self._nodes.close()
