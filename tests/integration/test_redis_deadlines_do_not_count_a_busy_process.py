"""A process whose event loop is behind (more work than its core can do) still gets Redis's
answers: a reply that arrived within the call's deadline is read, even when the process
reads it after the deadline, instead of being counted as Redis missing it (which opened the
breaker and gave every request the failure mode exactly when the gateway was busiest:
9,975 of 11,476 requests at 64 clients on one saturated core). Safe because Redis takes
nothing after the deadline in its own clock: a reply says whether the call took anything.
A Redis that does not answer still costs one deadline (tests/integration/test_slow_redis.py
and fault-matrix row 13)."""

from __future__ import annotations

import asyncio
import time

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimiterUnavailable, LimitKind
from gateway.limiter.redis import RedisLimiter
from tests.conftest import RedisProcess

DEADLINE_MS = 50
# Each event-loop iteration of the busy process takes this long: a reply sent at once by
# Redis is read two or three iterations after the call, past the deadline.
ITERATION_S = 0.04
CALLS = 20


async def test_replies_that_came_in_time_are_read_by_a_busy_process(
    redis_server: RedisProcess,
) -> None:
    limiter = RedisLimiter(
        RateLimitConfig(redis_timeout_ms=DEADLINE_MS, slices=False), redis_server.url
    )
    await limiter.warm_up()
    check = LimitCheck(LimitKind.REQUESTS, "llmgw:{busy}:rpm", 1_000_000)
    stop = asyncio.Event()

    async def busy() -> None:  # other requests' work, one blocking chunk per iteration
        while not stop.is_set():
            time.sleep(ITERATION_S)
            await asyncio.sleep(0)

    hog = asyncio.create_task(busy())
    await asyncio.sleep(0)
    outcomes: list[str] = []
    try:
        for i in range(CALLS):
            try:
                [result] = await limiter.admit([check], f"lease-{i}", 60_000)
                outcomes.append("allowed" if result.allowed else "refused")
            except LimiterUnavailable as unavailable:
                outcomes.append(f"unavailable: {unavailable}")
    finally:
        stop.set()
        await hog
        await limiter.close()

    assert outcomes == ["allowed"] * CALLS
