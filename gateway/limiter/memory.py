"""The in-process backend: exact for one gateway process, and only for one.

It is the default when no Redis URL is configured, so the demo and single-process
deployments need no other server. With several replicas (or worker processes) each would
keep its own budget and a team would get N times its limit: configure
`rate_limits.redis_url` as soon as more than one process serves traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.limiter.base import (
    CheckResult,
    LimitCheck,
    LimitKind,
    Settlement,
    gcra,
    gcra_adjust,
)


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = _monotonic_ms) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}

    async def admit(
        self, checks: list[LimitCheck], lease_id: str, lease_ttl_ms: int
    ) -> list[CheckResult]:
        now = self._clock()
        results: list[CheckResult] = []
        new_tats: dict[str, float] = {}
        for check in checks:
            if check.kind is LimitKind.CONCURRENCY:
                held = self._live_leases(check.key, now)
                allowed = len(held) < check.limit
                left = check.limit - len(held) - (1 if allowed else 0)
                results.append(CheckResult(allowed, left, 0, None if allowed else 1000))
            else:
                result, new_tat = gcra(self._tat.get(check.key, now), now, check)
                results.append(result)
                new_tats[check.key] = new_tat
        if all(result.allowed for result in results):
            self._tat.update(new_tats)
            for check in checks:
                if check.kind is LimitKind.CONCURRENCY:
                    self._leases.setdefault(check.key, {})[lease_id] = now + lease_ttl_ms
        return results

    async def settle(self, settlements: list[Settlement]) -> None:
        now = self._clock()
        for settlement in settlements:
            for key in settlement.lease_keys:
                self._leases.get(key, {}).pop(settlement.lease_id, None)
            for adjustment in settlement.adjustments:
                tat = self._tat.get(adjustment.key, now)
                self._tat[adjustment.key] = gcra_adjust(tat, now, adjustment)

    async def in_flight(self, key: str) -> int:
        return len(self._live_leases(key, self._clock()))

    async def remaining(self, check: LimitCheck) -> int:
        now = self._clock()
        probe = LimitCheck(check.kind, check.key, check.limit, 0, check.period_ms)
        return gcra(self._tat.get(check.key, now), now, probe)[0].remaining

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _live_leases(self, key: str, now: float) -> dict[str, float]:
        held = self._leases.setdefault(key, {})
        for lease, expiry in list(held.items()):
            if expiry <= now:
                del held[lease]
        return held
