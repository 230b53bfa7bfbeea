"""Row 14: an admission cancelled while its Redis call is in flight (the client left, a
deadline fired): redis-py's CVE-2023-28858/28859 (`test_cwe_404`), played against the
gateway's own limiter.

Best in class: a connection whose reply is still on its way is never handed to the next
caller: every later call reads its own reply, never the abandoned call's. Calls here are
made through a fault proxy that delays both ways, cancelled at 0.05 s to 1.95 s, while
other calls proceed; each call uses fresh keys with limits of its own, so the reply it
reads (remaining = limit - 1 for each of its checks) says whose reply it is."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimiterUnavailable, LimitKind
from gateway.limiter.redis import RedisLimiter
from gateway.testing.fault_proxy import FaultProxy
from tests.conftest import RedisProcess, StartProxy

TEAM = "llmgw:{row14}"
DELAY_S = 1.0  # each way: a reply comes 2 s after its call
CANCEL_AT_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 1.95)
_limits = itertools.count(100)


def fresh_call() -> list[LimitCheck]:
    """One to three request buckets, on keys nobody used, each with a limit no other call
    has."""
    limit = next(_limits)
    return [
        LimitCheck(LimitKind.REQUESTS, f"{TEAM}:{limit}:{j}", 10 * limit + j)
        for j in range(1 + limit % 3)
    ]


async def own_reply(limiter: RedisLimiter) -> bool:
    """One admission; True when its reply is its own."""
    checks = fresh_call()
    results = await limiter.admit(checks, f"lease-{checks[0].limit}", 60_000)
    return [(r.allowed, r.remaining) for r in results] == [(True, c.limit - 1) for c in checks]


@pytest.fixture
async def proxy(redis_server: RedisProcess, start_proxy: StartProxy) -> FaultProxy:
    return await start_proxy(redis_server.port)


@pytest.fixture
async def limiter(proxy: FaultProxy) -> AsyncIterator[RedisLimiter]:
    # A deadline far beyond the test's delays: only the cancellations end calls early.
    running = RedisLimiter(
        RateLimitConfig(redis_timeout_ms=10_000), f"redis://127.0.0.1:{proxy.port}/0"
    )
    await running.warm_up()
    assert await own_reply(running)
    yield running
    await running.close()


async def test_row_14_calls_cancelled_mid_flight_never_leave_a_reply_for_the_next_caller(
    limiter: RedisLimiter, proxy: FaultProxy
) -> None:
    proxy.delay(DELAY_S)
    cancelled = [asyncio.create_task(own_reply(limiter)) for _ in CANCEL_AT_S]
    bystanders = [asyncio.create_task(own_reply(limiter)) for _ in range(8)]
    waited = 0.0
    for task, at in zip(cancelled, CANCEL_AT_S, strict=True):
        await asyncio.sleep(at - waited)
        waited = at
        assert not task.done()  # cancelled while its reply is still on its way
        task.cancel()
    # The abandoned replies arrive from now on; new calls, on a fast network again, run
    # into them if a connection was given back with one pending.
    proxy.heal()
    during = await asyncio.gather(*(own_reply(limiter) for _ in range(40)))
    bystanders_ok = await asyncio.gather(*bystanders)
    await asyncio.sleep(0.2)
    after = await asyncio.gather(*(own_reply(limiter) for _ in range(40)))

    # A cancelled call ends cancelled, or (CPython 3.11's wait_for, which redis-py's send
    # uses, swallows a cancellation that lands as the write completes) runs on and reads
    # its own reply; never another's.
    outcomes = await asyncio.gather(*cancelled, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) or o is True for o in outcomes), outcomes
    assert sum(isinstance(o, asyncio.CancelledError) for o in outcomes) >= len(outcomes) // 2
    assert bystanders_ok == [True] * 8
    assert during == [True] * 40
    assert after == [True] * 40


async def test_row_14_calls_cut_by_their_deadline_never_leave_a_reply_for_the_next_caller(
    proxy: FaultProxy,
) -> None:
    """The same, ended by the limiter's own deadline (a cancellation inside the call)."""
    limiter = RedisLimiter(
        RateLimitConfig(redis_timeout_ms=1000, redis_retry_interval_s=0.01),
        f"redis://127.0.0.1:{proxy.port}/0",
    )
    await limiter.warm_up()
    try:
        # Requests arrive, replies come 0.5 s after their callers' deadline.
        proxy.delay(1.5, to_server=False)
        late = await asyncio.gather(
            *(own_reply(limiter) for _ in range(10)), return_exceptions=True
        )
        proxy.heal()
        # Bursts as wide as the pool, so that every pooled connection is taken again
        # (one caller at a time would only ever reuse the connection last given back).
        replies: list[bool | BaseException] = []
        for _ in range(3):
            await asyncio.sleep(0.02)  # past the retry interval of a missed deadline
            replies += await asyncio.gather(
                *(own_reply(limiter) for _ in range(12)), return_exceptions=True
            )
    finally:
        await limiter.close()

    assert all(isinstance(outcome, LimiterUnavailable) for outcome in late), late
    # Its own reply, or (a loaded machine) a deadline of its own: never another's reply.
    assert all(r is True or isinstance(r, LimiterUnavailable) for r in replies), replies
    assert replies.count(True) >= 30
