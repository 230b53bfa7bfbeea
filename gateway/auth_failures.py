"""Failed-authentication limits: a client address that fails to authenticate too often is
refused with 429 `too_many_auth_failures` for a while, valid key or not.

Owns the decision and what it costs. A failure (no key, a malformed header, an unknown
or expired key) is counted under its client address (`client_address`): in Redis when
`rate_limits.redis_url` is set, so replicas share the count, else in this process. The
failure past `auth_failures.max_failures` within `window_s` blocks the address for
`block_s`; the process remembers the block, and from then on refuses the address's
requests before their key is looked at, so a blocked guesser learns nothing, not even from
a key that would have been valid. Valid keys are never counted: authentication that
succeeds asks no one, and while no address is blocked the check is one truth test.

Another replica learns of a block from its own next failure of that address (Redis
answers with the count); until then it still looks keys up, so a guesser spreading guesses
over N replicas gets at most `max_failures` + N guesses per block.

When Redis cannot count in time, the failure is counted in this process instead (the limit
then holds per replica) and answered as that count says (401, or 429 past the limit),
whatever `rate_limits.failure_mode` says: that mode decides whether requests are admitted
without a limit decision, and a failed authentication is refused either way; a 503 would
tell a client with a wrong key to retry the same key, and authentication must not depend on
Redis.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.client_address import ClientAddresses, limit_key
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, RateLimited
from gateway.limiter.base import LimiterUnavailable
from gateway.limiter.failures import (
    MAX_TRACKED,
    FailureCount,
    FailureRule,
    MemoryFailureCounter,
    RedisFailureCounter,
)
from gateway.observability.metrics import GatewayMetrics

BLOCKED = "blocked"
_SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A refused authentication, as the audit line records it."""

    # "missing" (no key), "malformed" (not `Bearer <key>`), "unknown_key", "expired_key"
    # (past its `not_after`), or "blocked" (refused unread: the address is blocked).
    reason: str
    client: str
    # The first 8 hex digits of the SHA-256 of the presented key (the hash the config's
    # key_hashes hold, so a revoked key still in use can be recognised); None without one.
    key_fingerprint: str | None


class AuthFailureLimit:
    def __init__(
        self, config: GatewayConfig, metrics: GatewayMetrics, log: FilteringBoundLogger
    ) -> None:
        settings = config.auth_failures
        self._enabled = settings.enabled
        self._rule = FailureRule.of(settings)
        self._addresses = ClientAddresses(settings.trusted_proxies)
        self._local = MemoryFailureCounter(self._rule)
        url = config.rate_limits.redis_url
        self.shared = (
            RedisFailureCounter(config.rate_limits, url, self._rule)
            if url and self._enabled
            else None
        )
        self._warn_interval = config.rate_limits.warn_interval_s
        self._last_warning = -math.inf
        self._metrics = metrics
        self._log = log
        # Addresses (limit keys) known blocked, until when (monotonic seconds); expired
        # ones are swept once the earliest has ended, at most once a second (a sweep reads
        # them all).
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self._sweep_after = math.inf

    @property
    def blocking(self) -> bool:
        """Is any address blocked now? Until one is, a request costs this one test."""
        if not self._blocked:
            return False
        if time.monotonic() >= self._sweep_after:
            self._sweep()
        return bool(self._blocked)

    def client(self, request: web.Request) -> str:
        return self._addresses.of(request)

    def blocked_for(self, client: str) -> float | None:
        """Seconds left of the client's block; None when it is not blocked."""
        until = self._blocked.get(limit_key(client))
        if until is None:
            return None
        left = until - time.monotonic()
        return left if left > 0 else None

    def refuse_blocked(self, seconds_left: float) -> RateLimited:
        self._metrics.auth_failures.labels(BLOCKED).inc()
        return _too_many(seconds_left)

    async def failed(self, failure: AuthFailure) -> GatewayError | None:
        """Count a failed authentication. The error to answer it with when it is not a
        plain 401 (None): 429 once its address is past the limit."""
        self._metrics.auth_failures.labels(failure.reason).inc()
        if not self._enabled:
            return None
        key = limit_key(failure.client)
        counted = await self._count(key)
        if counted.count > self._rule.max_failures:
            if counted.count == self._rule.max_failures + 1:
                self._metrics.auth_blocks.inc()
                self._log.warning(
                    "auth_address_blocked",
                    client_address=failure.client,
                    failures=counted.count,
                    block_s=round(counted.ttl_ms / 1000, 3),
                )
            self._block(key, counted.ttl_ms / 1000)
            return _too_many(counted.ttl_ms / 1000)
        return None

    async def warm_up(self) -> None:
        if self.shared is not None:
            await self.shared.warm_up()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    async def _count(self, key: str) -> FailureCount:
        """The address's count: Redis's, or this process's when Redis cannot take it."""
        if self.shared is None:
            return self._local.record(key)
        try:
            return await self.shared.record(key)
        except LimiterUnavailable as unavailable:
            self._metrics.auth_limiter_errors.inc()
            now = time.monotonic()
            if now - self._last_warning >= self._warn_interval:
                self._last_warning = now
                self._log.warning("auth_failures_counted_locally", reason=str(unavailable))
            return self._local.record(key)

    def _block(self, key: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._blocked.pop(key, None)
        while len(self._blocked) >= MAX_TRACKED:  # a flood of addresses: forget the oldest
            self._blocked.popitem(last=False)
        self._blocked[key] = until
        self._sweep_after = min(self._sweep_after, until)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [key for key, until in self._blocked.items() if until <= now]:
            del self._blocked[key]
        earliest = min(self._blocked.values(), default=math.inf)
        self._sweep_after = max(earliest, now + _SWEEP_INTERVAL_S)


def _too_many(seconds_left: float) -> RateLimited:
    retry_s = max(1, math.ceil(seconds_left))
    return RateLimited(
        f"Too many failed authentications from this client address; every request from it "
        f"is refused for {retry_s}s more.",
        code="too_many_auth_failures",
        headers={
            "Retry-After": str(retry_s),
            "retry-after-ms": str(math.ceil(seconds_left * 1000)),
        },
    )
