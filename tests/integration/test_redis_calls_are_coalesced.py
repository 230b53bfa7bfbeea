"""Redis calls made in the same event-loop tick are coalesced (`gateway/limiter/nodes.py`):
concurrent admissions decided by Redis share one connection and one round trip, each
with its own answer."""

from __future__ import annotations

import asyncio
import re
from typing import cast

from redis.asyncio import Redis

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimitKind, Settlement
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


async def evalsha_args(client: Redis) -> list[int]:
    """The number of arguments of every EVALSHA since the slow log was reset (logged with
    a threshold of 0: every command). The log keeps 32 and says how many more there were."""
    counts = []
    for entry in await client.slowlog_get(-1):
        words = entry["command"].split(b" ")
        if words[0] == b"EVALSHA":
            more = re.search(rb"\.\.\. \((\d+) more arguments\)", entry["command"])
            counts.append(len(words) - 1 + (int(more.group(1)) - 4 if more else 0))
    return counts


async def test_a_batch_carries_a_teams_unconfirmed_settlements_once(
    redis_server: RedisProcess,
) -> None:
    """Each admission carries its team's unconfirmed settlements; in one batch only the
    first does (the others run after it, on the same connection), so Redis's work grows
    with the admissions, not with admissions times settlements (measured before: 60
    admissions each carrying 84 settlements, 2.5 ms of Redis time each, missed the 50 ms
    deadline and opened the breaker on a saturated gateway)."""
    limiter = RedisLimiter(RateLimitConfig(slices=False, redis_timeout_ms=2000), redis_server.url)
    await limiter.warm_up()
    inflight = LimitCheck(LimitKind.CONCURRENCY, "llmgw:{team-a}:inflight", 1000)
    held = [f"held-{i}" for i in range(50)]
    for lease in held:
        [result] = await limiter.admit([inflight], lease, 60_000)
        assert result.allowed
    releases = [Settlement(lease, None, (inflight.key,), ()) for lease in held]
    client = Redis.from_url(redis_server.url)
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 1000)
    await client.slowlog_reset()

    answers = await asyncio.gather(
        *(
            limiter.admit([inflight], f"new-{i}", 60_000, settlements=releases)
            for i in range(ADMISSIONS)
        )
    )
    sizes = await evalsha_args(client)
    members = cast(list[bytes], await client.zrange(inflight.key, 0, -1))
    in_set = {member.decode() for member in members}
    await client.config_set("slowlog-log-slower-than", 10_000)
    await client.aclose()
    await limiter.close()

    assert all(result.allowed for (result,) in answers)
    # Every release applied (by the first admission), every new lease taken.
    assert in_set == {f"new-{i}" for i in range(ADMISSIONS)}
    # One call of the batch carried the 50 settlements, the others none.
    assert len(sizes) == ADMISSIONS, sizes
    assert sum(size > 50 for size in sizes) == 1, sizes
