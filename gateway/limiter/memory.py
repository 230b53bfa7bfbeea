"""The in-process backend: exact for one gateway process, and only for one.

It is the default when no Redis URL is configured, so the demo and single-process
deployments need no other server. With several replicas (or worker processes) each would
keep its own budget and a team would get N times its limit: configure
`rate_limits.redis_url` as soon as more than one process serves traffic.

It makes the same decisions as the Redis script, tickets and settlements-first included;
every call completes without yielding to the event loop, so it is atomic by construction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.limiter.base import (
    CheckResult,
    LimitCheck,
    LimitKind,
    Settlement,
    gcra,
    gcra_adjust,
)

# Open tickets of a key before the first sweep of expired ones.
_FIRST_SWEEP = 256


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class MemoryLimiter:
    call_deadline_s = 0.0

    def __init__(self, clock: Callable[[], float] = _monotonic_ms) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        # Concurrency leases and open tickets: key -> member -> expiry (ms).
        self._leases: dict[str, dict[str, float]] = {}
        self._tickets: dict[str, dict[str, float]] = {}
        self._sweep_at: dict[str, int] = {}

    async def admit(
        self,
        checks: list[LimitCheck],
        lease_id: str,
        lease_ttl_ms: int,
        *,
        ticket_key: str | None = None,
        settlements: Sequence[Settlement] = (),
    ) -> list[CheckResult]:
        now = self._clock()
        self._settle(settlements, now)
        results: list[CheckResult] = []
        new_tats: dict[str, float] = {}
        for check in checks:
            if check.kind is LimitKind.CONCURRENCY:
                held = _live(self._leases, check.key, now)
                allowed = len(held) < check.limit
                left = check.limit - len(held) - (1 if allowed else 0)
                results.append(CheckResult(allowed, left, 0, None if allowed else 1000))
            else:
                result, new_tat = gcra(self._tat.get(check.key, now), now, check)
                results.append(result)
                new_tats[check.key] = new_tat
        if all(result.allowed for result in results):
            self._tat.update(new_tats)
            expiry = now + lease_ttl_ms
            for check in checks:
                if check.kind is LimitKind.CONCURRENCY:
                    self._leases[check.key][lease_id] = expiry
            if ticket_key is not None:
                self._open_tickets(ticket_key, now)[lease_id] = expiry
        return results

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        self._settle(settlements, self._clock())

    def _settle(self, settlements: Sequence[Settlement], now: float) -> None:
        for settlement in settlements:
            for key in settlement.lease_keys:
                self._leases.get(key, {}).pop(settlement.lease_id, None)
            if settlement.ticket_key is None:
                continue
            tickets = self._open_tickets(settlement.ticket_key, now)
            if settlement.once_ms:
                if tickets.get(settlement.lease_id, now) > now:
                    continue  # applied before
                tickets[settlement.lease_id] = now + settlement.once_ms
            elif tickets.pop(settlement.lease_id, now) <= now:
                continue  # settled before, expired, or its admission never took effect
            for adjustment in settlement.adjustments:
                tat = self._tat.get(adjustment.key, now)
                self._tat[adjustment.key] = gcra_adjust(tat, now, adjustment)

    def _open_tickets(self, key: str, now: float) -> dict[str, float]:
        """A team's tickets; expired ones are swept out only when the set has doubled
        since the last sweep (a ticket is checked for expiry when it is used)."""
        held = self._tickets.setdefault(key, {})
        if len(held) >= self._sweep_at.get(key, _FIRST_SWEEP):
            held = _live(self._tickets, key, now)
            self._sweep_at[key] = max(_FIRST_SWEEP, 2 * len(held))
        return held

    async def in_flight(self, key: str) -> int:
        return len(_live(self._leases, key, self._clock()))

    async def remaining(self, check: LimitCheck) -> int:
        now = self._clock()
        probe = LimitCheck(check.kind, check.key, check.limit, 0, check.period_ms)
        return gcra(self._tat.get(check.key, now), now, probe)[0].remaining

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _live(members: dict[str, dict[str, float]], key: str, now: float) -> dict[str, float]:
    """The members of `key` that have not expired (expired ones are dropped)."""
    held = members.setdefault(key, {})
    for member, expiry in list(held.items()):
        if expiry <= now:
            del held[member]
    return held
