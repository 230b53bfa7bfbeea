"""A burst of more simultaneous admissions than the limiter has connections to Redis (100 a
node) is decided by Redis, every admission of it: the ones that find every connection in
use wait for one to come back (within their deadline) rather than fail. redis-py's pool
raised MaxConnectionsError instead, a ConnectionError that opened the breaker: 200 of
these 300 admissions got the failure mode, and the whole gateway ran without limits for a
retry interval."""

from __future__ import annotations

import asyncio

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimitKind
from gateway.limiter.redis import RedisLimiter
from tests.conftest import RedisProcess

BURST = 300  # three times the connections of a node's pool
LIMIT = 100


async def test_a_burst_three_times_the_pool_is_decided_exactly(redis_server: RedisProcess) -> None:
    # A generous deadline: the burst queues behind a hundred connections on a shared machine.
    limiter = RedisLimiter(RateLimitConfig(redis_timeout_ms=5000), redis_server.url)
    await limiter.warm_up()
    check = LimitCheck(LimitKind.REQUESTS, "llmgw:{burst}:rpm", LIMIT)
    try:
        outcomes = await asyncio.gather(
            *(limiter.admit([check], f"lease-{i}", 60_000) for i in range(BURST)),
            return_exceptions=True,
        )
        connected = redis_server.command("INFO", "clients").decode()
    finally:
        await limiter.close()

    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    allowed = [results[0].allowed for results in outcomes if not isinstance(results, BaseException)]
    assert (allowed.count(True), allowed.count(False)) == (LIMIT, BURST - LIMIT)
    clients = int(connected.split("connected_clients:")[1].split()[0])
    assert clients <= 100 + 1  # the pool's bound held (and this test's own connection)
