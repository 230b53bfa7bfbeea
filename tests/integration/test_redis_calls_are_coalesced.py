"""Redis calls made in the same event-loop tick are coalesced (`gateway/limiter/nodes.py`):
concurrent admissions decided by Redis share one connection and one round trip, each
with its own answer."""

from __future__ import annotations

import asyncio

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimitKind
from gateway.limiter.redis import RedisLimiter
from tests.conftest import RedisProcess, resp_text

ADMISSIONS = 40
LIMIT = 25


def stat(redis: RedisProcess, section: str, name: str) -> int:
    for line in resp_text(redis.command("INFO", section)).splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no {name} in INFO {section}")


def evalsha_calls(redis: RedisProcess) -> int:
    for line in resp_text(redis.command("INFO", "commandstats")).splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_concurrent_admissions_share_one_round_trip_each_with_its_answer(
    redis_server: RedisProcess,
) -> None:
    limiter = RedisLimiter(RateLimitConfig(slices=False, redis_timeout_ms=2000), redis_server.url)
    await limiter.warm_up()  # one connection, the scripts loaded
    calls = evalsha_calls(redis_server)
    connections = stat(redis_server, "stats", "total_connections_received")
    rpm = LimitCheck(LimitKind.REQUESTS, "llmgw:{team-a}:rpm", LIMIT)

    answers = await asyncio.gather(
        *(limiter.admit([rpm], f"lease-{i}", 60_000) for i in range(ADMISSIONS))
    )
    # (Less the test's own: each INFO here is a connection of its own.)
    opened = stat(redis_server, "stats", "total_connections_received") - connections - 1
    ran = evalsha_calls(redis_server) - calls
    await limiter.close()

    # Every admission ran as its own script, each got its own answer: exactly the limit
    # admitted, each seeing the budget its predecessors left.
    assert ran == ADMISSIONS
    allowed = [result for (result,) in answers if result.allowed]
    assert len(allowed) == LIMIT
    assert sorted(result.remaining for result in allowed) == list(range(LIMIT))
    assert all(result.retry_after_ms for (result,) in answers if not result.allowed)
    # One round trip on the connection warm-up opened, where each call on its own needs a
    # connection of its own while the others are in flight (40 connections).
    assert opened == 0, opened
