"""What a rate-limit backend decides, and the interface both backends implement.

Algorithms, the same in both backends:
- Requests and tokens per minute: GCRA (the generic cell rate algorithm, a token bucket
  kept as one number, the "theoretical arrival time"). Chosen over a sliding window
  because it stores one value per key instead of one entry per request, takes a variable
  cost (a request's tokens) as naturally as a cost of 1, and refills continuously, which
  is what OpenAI's own limits do and what its `x-ratelimit-reset-*` headers describe: the
  time until the bucket is full again. A team with a limit of L per minute can spend L at
  once from a full bucket and then L per minute, evenly.
- Concurrent requests: leases, one sorted-set member per in-flight request scored by its
  expiry, so a slot whose release was lost (a killed replica) frees itself.

Admission is all or nothing: a request refused by one limit consumes nothing from the
others.

Settlement replaces a request's token reservation with its real usage and returns its
leases. It is idempotent (an admitted request holds a ticket; its token difference applies
only while the ticket is open), and an admission applies the settlements it is handed
before its checks, in the same atomic step: the rate-limit stage hands each team's
not-yet-confirmed settlements to that team's next admission, which makes the budget exact
without an extra call.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MINUTE_MS = 60_000


class LimitKind(enum.StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENCY = "concurrency"


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit a request must pass: `cost` units out of `limit` per `period_ms` for a
    bucket, or one slot out of `limit` for concurrency."""

    kind: LimitKind
    key: str
    limit: int
    cost: int = 1
    period_ms: int = MINUTE_MS


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    remaining: int
    # Until the bucket is full again (0 for concurrency).
    reset_ms: int
    # When a refused request could pass; None when it never can (cost above the limit).
    retry_after_ms: int | None


@dataclass(frozen=True, slots=True)
class TokenAdjustment:
    """Tokens to charge (positive) or give back (negative) once the real usage is known."""

    key: str
    limit: int
    delta: int
    period_ms: int = MINUTE_MS


@dataclass(frozen=True)  # no slots: it caches its wire form
class Settlement:
    """What one finished (or abandoned) request gives back: its leases, and its token
    difference.

    Settling is idempotent, so a settlement can be sent again until a call that carried it
    is known to have succeeded: leases are removed by id, and the token adjustments apply
    only while the request's ticket (its lease id, recorded under `ticket_key` by its
    admission) is still open, closing it. A settlement whose admission never took effect
    finds no ticket and changes nothing."""

    lease_id: str
    ticket_key: str | None
    lease_keys: tuple[str, ...]
    adjustments: tuple[TokenAdjustment, ...]
    # Not 0: no ticket was ever opened for it (a request admitted from a budget slice,
    # see `limiter.slices`, whose slice is gone); the first call that carries it applies
    # its adjustments and leaves a marker under `ticket_key` for this many ms, so a call
    # carrying it again applies nothing.
    once_ms: int = 0

    @functools.cached_property
    def keys(self) -> tuple[str, ...]:
        """Every key it touches."""
        ticket = () if self.ticket_key is None else (self.ticket_key,)
        return (*ticket, *self.lease_keys, *(a.key for a in self.adjustments))

    @functools.cached_property
    def wire(self) -> str:
        """The settlement as one string of space-separated words, which the Redis script
        parses: lease id, 0 or 1 and the ticket key (or 2, the key and `once_ms`), the
        number of lease keys and each, the number of adjustments and each as key, limit,
        delta, period. Built once, however often the settlement is carried (one argument
        instead of a dozen, which is most of the cost of carrying it). Keys never hold
        whitespace: the names they are made of cannot."""
        if self.ticket_key is None:
            ticket = ["0"]
        elif self.once_ms:
            ticket = ["2", self.ticket_key, str(self.once_ms)]
        else:
            ticket = ["1", self.ticket_key]
        words = [self.lease_id, *ticket, str(len(self.lease_keys)), *self.lease_keys]
        words.append(str(len(self.adjustments)))
        for a in self.adjustments:
            words += [a.key, str(a.limit), str(a.delta), str(a.period_ms)]
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class SliceRequest:
    """One budget slice asked of the backend (see `limiter.slices`): exactly `want` units
    of a bucket, or `want` concurrency slots, under the id `slice_id`, kept `ttl_ms` (a
    bucket slice's ticket, a concurrency slice's lease members)."""

    kind: LimitKind
    key: str
    limit: int
    period_ms: int
    want: int
    slice_id: str
    ttl_ms: int


class LimiterUnavailable(Exception):
    """The backend could not decide in time (Redis down, slow or unreachable).

    `may_have_run`: the call was sent, so Redis may still run it (or have run it) after
    the caller gave up; whatever it took must be given back."""

    def __init__(self, reason: str, *, may_have_run: bool = False) -> None:
        super().__init__(reason)
        self.may_have_run = may_have_run


class LimiterBackend(Protocol):
    @property
    def call_deadline_s(self) -> float:
        """The most one call may take; a call's effects on the backend happen before its
        start plus this much, or never (0 for a backend that decides in-process)."""
        ...

    async def admit(
        self,
        checks: list[LimitCheck],
        lease_id: str,
        lease_ttl_ms: int,
        *,
        ticket_key: str | None = None,
        settlements: Sequence[Settlement] = (),
    ) -> list[CheckResult]:
        """Apply `settlements` first, then decide every check atomically and consume from
        all only if all allow; an admitted request with a `ticket_key` gets a ticket
        there, for its settlement. On Redis all keys must share one hash tag."""
        ...

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        """Release finished requests' leases and reconcile their tokens, in one call (on
        Redis, all keys must share one hash tag: one team per call)."""
        ...

    async def in_flight(self, key: str) -> int:
        """Live leases under a concurrency key."""
        ...

    async def remaining(self, check: LimitCheck) -> int:
        """Units left in a bucket now, without consuming any."""
        ...

    async def warm_up(self) -> None:
        """Prepare for traffic (connect, load scripts); never raises."""
        ...

    async def close(self) -> None: ...


# Float slack in GCRA comparisons, in ms. Clock values are large (Redis's epoch
# milliseconds are ~1.7e12, where a double resolves ~0.0002 ms), so a budget that is exactly
# spent, or a count that is exactly whole, can come out a hair off; one microsecond of
# slack absorbs that and admits nothing measurable (1 us of refill).
SLACK_MS = 0.001


def gcra(tat_ms: float, now_ms: float, check: LimitCheck) -> tuple[CheckResult, float]:
    """One GCRA decision: the result and the new theoretical arrival time if allowed.

    The bucket holds `limit` units refilled over `period_ms`; each unit is an interval of
    period/limit ms, and the bucket is full when tat <= now. Differences are taken between
    nearby values only (`base - now`), never between a sum and a large clock value, which
    would cancel digits."""
    interval = check.period_ms / check.limit
    base = max(tat_ms, now_ms)
    current = base - now_ms
    debt = current + check.cost * interval
    left = max(int((check.period_ms - current + SLACK_MS) // interval), 0)
    if check.cost > check.limit:
        return CheckResult(False, left, int(current), None), tat_ms
    if debt > check.period_ms + SLACK_MS:
        # The shortest wait after which it passes (the slack absorbs float error).
        retry = math.ceil(debt - check.period_ms)
        return CheckResult(False, left, int(current), retry), tat_ms
    left = int((check.period_ms - debt + SLACK_MS) // interval)
    return CheckResult(True, left, int(debt), None), base + check.cost * interval


def gcra_adjust(tat_ms: float, now_ms: float, adjustment: TokenAdjustment) -> float:
    """The new theoretical arrival time after charging or refunding `delta` units; a
    refund never makes the bucket fuller than full."""
    interval = adjustment.period_ms / adjustment.limit
    return (
        max(tat_ms, now_ms) + adjustment.delta * interval
        if adjustment.delta > 0
        else max(now_ms, tat_ms + adjustment.delta * interval)
    )
