"""The Redis backend: one budget shared exactly by every gateway replica.

Each admission is one atomic Lua script (EVALSHA, one round trip; redis-py reloads the
script on NOSCRIPT after a Redis restart) that checks every limit of the request and
consumes from all of them only if all allow. Time is Redis's own `TIME`, so replicas with
skewed clocks still share one timeline. All keys of a team share the hash tag `{prefix:team}`,
so a request's keys live in one slot and the scripts run unchanged on Redis Cluster. Every
key carries a TTL: an idle team leaves nothing behind.

Every call has a hard deadline (`redis_timeout_ms`). When Redis refuses connections, or
misses the deadline three times in a row, the backend reports itself unavailable without
calling Redis for `redis_retry_interval_s`, then lets calls probe again: a dead Redis costs
at most one deadline per interval, and the limiter recovers by itself when Redis is back.
A single missed deadline does not open the breaker: under a burst the gateway's own event
loop can be late, and one slow answer is no reason to stop limiting everyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.config import RateLimitConfig
from gateway.limiter.base import (
    SLACK_MS,
    CheckResult,
    LimitCheck,
    LimiterUnavailable,
    LimitKind,
    Settlement,
)

# Consecutive missed deadlines that mark Redis unavailable.
_TIMEOUTS_TO_OPEN = 3

_NOW = f"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local slack = {SLACK_MS}
"""

# KEYS: one per check. ARGV: lease_id, lease_ttl_ms, then per check kind ('b' bucket or
# 'c' concurrency), limit, cost, period_ms. Returns per check: allowed, remaining,
# reset_ms, retry_after_ms (-1: none).
ADMIT = (
    _NOW
    + """
local lease_id, ttl = ARGV[1], tonumber(ARGV[2])
local out, ok, new_tat = {}, true, {}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local kind, limit = ARGV[a + 1], tonumber(ARGV[a + 2])
  local cost, period = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local r = #out
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZCARD', KEYS[i])
    if held < limit then
      out[r + 1], out[r + 2], out[r + 3], out[r + 4] = 1, limit - held - 1, 0, -1
    else
      ok = false
      out[r + 1], out[r + 2], out[r + 3], out[r + 4] = 0, 0, 0, 1000
    end
  else
    -- As gcra() in base.py: differences between nearby values only.
    local interval = period / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    local base = math.max(tat, now)
    local current = base - now
    local debt = current + cost * interval
    local left = math.max(math.floor((period - current + slack) / interval), 0)
    if cost > limit then
      ok = false
      out[r + 1], out[r + 2], out[r + 3], out[r + 4] = 0, left, math.floor(current), -1
    elseif debt > period + slack then
      ok = false
      out[r + 1], out[r + 2], out[r + 3] = 0, left, math.floor(current)
      out[r + 4] = math.floor(debt - period) + 1
    else
      new_tat[i] = base + cost * interval
      out[r + 1], out[r + 2] = 1, math.floor((period - debt + slack) / interval)
      out[r + 3], out[r + 4] = math.floor(debt), -1
    end
  end
end
if ok then
  for i = 1, #KEYS do
    if new_tat[i] then
      redis.call('SET', KEYS[i], string.format('%.17g', new_tat[i]),
                 'PX', math.ceil(new_tat[i] - now) + 1000)
    else
      redis.call('ZADD', KEYS[i], now + ttl, lease_id)
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
return out
"""
)

# KEYS: lease keys, then token keys. ARGV: number of lease keys, the lease id of each
# lease key, then per token key limit, delta, period_ms. Settles a batch of requests.
SETTLE = (
    _NOW
    + """
local leases = tonumber(ARGV[1])
for i = 1, leases do redis.call('ZREM', KEYS[i], ARGV[1 + i]) end
for i = leases + 1, #KEYS do
  local a = 1 + leases + (i - leases - 1) * 3
  local limit, delta, period = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  local new_tat
  if delta > 0 then
    new_tat = math.max(tat, now) + delta * interval
  else
    new_tat = math.max(now, tat + delta * interval)
  end
  if new_tat > now then
    local ttl_ms = math.ceil(new_tat - now) + 1000
    redis.call('SET', KEYS[i], string.format('%.17g', new_tat), 'PX', ttl_ms)
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""
)

PEEK = (
    _NOW
    + """
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
return math.max(math.floor((period - math.max(tat - now, 0) + slack) / interval), 0)
"""
)


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


class RedisLimiter:
    def __init__(self, config: RateLimitConfig, url: str) -> None:
        self._timeout = config.redis_timeout_ms / 1000.0
        self._retry_interval = config.redis_retry_interval_s
        self._down_until = 0.0
        self._consecutive_failures = 0
        self._pool: ConnectionPool = ConnectionPool.from_url(
            url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        self._admit = _Script.of(ADMIT)
        self._settle = _Script.of(SETTLE)
        self._peek = _Script.of(PEEK)

    async def admit(
        self, checks: list[LimitCheck], lease_id: str, lease_ttl_ms: int
    ) -> list[CheckResult]:
        args: list[Any] = [lease_id, lease_ttl_ms]
        for check in checks:
            kind = "c" if check.kind is LimitKind.CONCURRENCY else "b"
            args += [kind, check.limit, check.cost, check.period_ms]
        flat = await self._call(self._admit, [c.key for c in checks], args)
        return [
            CheckResult(
                allowed=flat[i] == 1,
                remaining=int(flat[i + 1]),
                reset_ms=int(flat[i + 2]),
                retry_after_ms=None if flat[i] == 1 or flat[i + 3] < 0 else int(flat[i + 3]),
            )
            for i in range(0, len(flat), 4)
        ]

    async def settle(self, settlements: list[Settlement]) -> None:
        lease_keys = [key for s in settlements for key in s.lease_keys]
        lease_ids = [s.lease_id for s in settlements for _ in s.lease_keys]
        adjustments = [a for s in settlements for a in s.adjustments]
        args: list[Any] = [len(lease_keys), *lease_ids]
        for adjustment in adjustments:
            args += [adjustment.limit, adjustment.delta, adjustment.period_ms]
        await self._call(self._settle, [*lease_keys, *(a.key for a in adjustments)], args)

    async def in_flight(self, key: str) -> int:
        now_ms = int(time.time() * 1000)
        count: int = await self._client.zcount(key, now_ms, "+inf")
        return count

    async def remaining(self, check: LimitCheck) -> int:
        left: int = await self._call(self._peek, [check.key], [check.limit, check.period_ms])
        return left

    async def warm_up(self) -> None:
        """Open a connection and load the scripts before traffic arrives, so the first
        requests do not pay for them; a Redis that is down now is handled per request."""
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                for script in (self._admit, self._settle, self._peek):
                    await self._client.script_load(script.source)
        except (RedisError, OSError, TimeoutError):
            return

    async def close(self) -> None:
        await self._client.aclose()

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _call(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        if time.monotonic() < self._down_until:
            raise LimiterUnavailable("Redis is marked unavailable; retrying it shortly")
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._evalsha(script, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._consecutive_failures += 1
            refused = isinstance(exc, RedisConnectionError | OSError)
            if refused or self._consecutive_failures >= _TIMEOUTS_TO_OPEN:
                self._down_until = time.monotonic() + self._retry_interval
            raise LimiterUnavailable(type(exc).__name__) from None
        self._consecutive_failures = 0
        self._down_until = 0.0
        return result

    async def _evalsha(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on a pooled connection, loading the script on NOSCRIPT (after a Redis
        restart or SCRIPT FLUSH). This skips redis-py's client layer (retries, events,
        observability hooks), which costs more CPU than the round trip itself; the
        connection, its hiredis parser and the pool are redis-py's."""
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return await connection.read_response()
            except NoScriptError:
                await connection.send_command("SCRIPT", "LOAD", script.source)
                await connection.read_response()
                await connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return await connection.read_response()
        except BaseException:
            # Cancelled or failed mid-call: a reply may still be in flight on this
            # connection, and the next caller must never read it as its own.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._pool.release(connection)
