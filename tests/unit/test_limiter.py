"""GCRA and leases, on the in-process backend with a fake clock (the Redis script makes the
same decisions; tests/integration/test_rate_limits.py runs both against one suite)."""

from __future__ import annotations

from gateway.limiter.base import LimitCheck, LimitKind, Settlement, TokenAdjustment
from gateway.limiter.memory import MemoryLimiter
from gateway.stages.ratelimit import format_duration


class Clock:
    def __init__(self, ms: float = 1_000_000.0) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms


def rpm(limit: int) -> LimitCheck:
    return LimitCheck(LimitKind.REQUESTS, "team:rpm", limit)


async def test_a_full_bucket_admits_the_limit_at_once_then_one_per_interval() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)

    burst = [(await limiter.admit([rpm(6)], "l", 1000))[0] for _ in range(7)]
    assert [r.allowed for r in burst] == [True] * 6 + [False]
    assert [r.remaining for r in burst[:6]] == [5, 4, 3, 2, 1, 0]
    assert burst[6].retry_after_ms == 10_000  # one request every 10 s

    clock.ms += 9_999
    assert not (await limiter.admit([rpm(6)], "l", 1000))[0].allowed
    clock.ms += 1  # exactly the wait it was told
    assert (await limiter.admit([rpm(6)], "l", 1000))[0].allowed


async def test_remaining_counts_down_exactly_at_large_clock_values() -> None:
    # time.monotonic() in milliseconds on a machine up for days; subtracting two such
    # values cancels digits, and a count that should be whole came out a hair below it.
    for start in (8_385_692.81956629, 974_411_496_177.6581, 2.0**40 + 0.1):
        for limit in (3, 7, 1000):
            limiter = MemoryLimiter(Clock(start))

            results = [(await limiter.admit([rpm(limit)], "l", 1000))[0] for _ in range(8)]

            expected = [limit - n for n in range(1, 9)]
            assert [r.remaining for r in results] == [max(e, 0) for e in expected], (start, limit)
            assert [r.allowed for r in results] == [e >= 0 for e in expected], (start, limit)


async def test_reset_is_the_time_until_the_bucket_is_full_again() -> None:
    limiter = MemoryLimiter(Clock())

    results = [(await limiter.admit([rpm(60)], "l", 1000))[0] for _ in range(3)]

    assert [r.reset_ms for r in results] == [1000, 2000, 3000]


async def test_admission_is_all_or_nothing() -> None:
    limiter = MemoryLimiter(Clock())
    tokens = LimitCheck(LimitKind.TOKENS, "team:tpm", 100, cost=80)

    first = await limiter.admit([rpm(10), tokens], "a", 1000)
    second = await limiter.admit([rpm(10), tokens], "b", 1000)

    assert [r.allowed for r in first] == [True, True]
    assert [r.allowed for r in second] == [True, False]
    # The refused request took nothing from the request budget.
    assert await limiter.remaining(rpm(10)) == 9


async def test_a_cost_above_the_limit_can_never_pass() -> None:
    limiter = MemoryLimiter(Clock())

    result = (await limiter.admit([LimitCheck(LimitKind.TOKENS, "t", 100, 101)], "l", 1))[0]

    assert not result.allowed and result.retry_after_ms is None


def refund(lease: str, tokens: int) -> Settlement:
    return Settlement(lease, "team:tickets", (), (TokenAdjustment("team:tpm", 1000, -tokens),))


async def test_settling_replaces_the_reservation_once_and_refunds_no_further_than_full() -> None:
    limiter = MemoryLimiter(Clock())
    tokens = LimitCheck(LimitKind.TOKENS, "team:tpm", 1000, cost=600)

    await limiter.admit([tokens], "a", 1000, ticket_key="team:tickets")
    assert await limiter.remaining(tokens) == 400
    await limiter.settle([refund("a", 550)])
    await limiter.settle([refund("a", 550)])  # sent again (its first call timed out)
    assert await limiter.remaining(tokens) == 950
    await limiter.admit([tokens], "b", 1000, ticket_key="team:tickets")
    await limiter.settle([refund("b", 5000)])
    assert await limiter.remaining(tokens) == 1000


async def test_settlement_of_an_admission_that_never_took_effect_changes_nothing() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    tokens = LimitCheck(LimitKind.TOKENS, "team:tpm", 1000, cost=600)
    await limiter.admit([tokens], "a", 1000, ticket_key="team:tickets")

    await limiter.settle([refund("never-admitted", 600)])
    assert await limiter.remaining(tokens) == 400
    clock.ms += 1000  # a's ticket expired with its lease: too late to reconcile
    await limiter.settle([refund("a", 600)])
    assert await limiter.remaining(tokens) == 416  # only a second of refill (1000 a minute)


async def test_admission_applies_the_settlements_it_carries_before_its_checks() -> None:
    limiter = MemoryLimiter(Clock())
    tokens = LimitCheck(LimitKind.TOKENS, "team:tpm", 1000, cost=600)
    await limiter.admit([tokens], "a", 1000, ticket_key="team:tickets")

    second = await limiter.admit(
        [tokens], "b", 1000, ticket_key="team:tickets", settlements=[refund("a", 550)]
    )

    assert second[0].allowed and second[0].remaining == 350


async def test_leases_count_in_flight_and_free_on_settle_or_expiry() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    slots = LimitCheck(LimitKind.CONCURRENCY, "team:inflight", 2)

    assert (await limiter.admit([slots], "a", 5000))[0].allowed
    assert (await limiter.admit([slots], "b", 5000))[0].allowed
    assert not (await limiter.admit([slots], "c", 5000))[0].allowed
    await limiter.settle([Settlement("a", None, ("team:inflight",), ())])
    assert await limiter.in_flight("team:inflight") == 1
    clock.ms += 5000  # b's release was lost: its lease expires by itself
    assert await limiter.in_flight("team:inflight") == 0


def test_reset_durations_use_openais_format() -> None:
    assert [format_duration(ms) for ms in (0, 20, 999, 1000, 1500, 59_999, 60_000, 360_000)] == [
        "0ms",
        "20ms",
        "999ms",
        "1s",
        "1.5s",
        "59.999s",
        "1m0s",
        "6m0s",
    ]
