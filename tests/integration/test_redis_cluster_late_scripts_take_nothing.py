"""On a Redis Cluster, an admission that runs on its master after the caller's deadline
takes nothing, on every master: the deadline travels in the call, converted into the clock
of the master it is sent to, and the script compares it with that master's `TIME`. Here
each master is kept busy (a script looping for BUSY_MS) while the admissions arrive; they
give up at their deadline and run once the master is free again."""

from __future__ import annotations

import asyncio

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimiterUnavailable, LimitKind
from gateway.limiter.redis import RedisLimiter
from tests.conftest import RedisClusterProcesses
from tests.integration.redis_cluster_gateways import teams_on

DEADLINE_MS = 100
BUSY_MS = 500  # well below the cluster's node timeout: nobody takes the master for dead
BUSY = f"""
local started = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - started[1]) * 1000000 + now[2] - started[2] > {BUSY_MS * 1000}
return 1
"""


def checks(team: str) -> list[LimitCheck]:
    return [
        LimitCheck(LimitKind.CONCURRENCY, f"llmgw:{{{team}}}:inflight", 10),
        LimitCheck(LimitKind.TOKENS, f"llmgw:{{{team}}}:tpm", 10_000, cost=500),
    ]


async def test_scripts_run_after_the_deadline_take_nothing_on_any_master(
    redis_cluster: RedisClusterProcesses,
) -> None:
    teams = {port: names[0] for port, names in teams_on(redis_cluster, "late").items()}
    limiter = RedisLimiter(RateLimitConfig(redis_timeout_ms=DEADLINE_MS), redis_cluster.url)
    await limiter.warm_up()  # learns each master's clock
    try:
        busy = [
            asyncio.create_task(
                asyncio.to_thread(redis_cluster.node(port).command, "EVAL", BUSY, "0")
            )
            for port in teams
        ]
        await asyncio.sleep(0.05)  # the masters are busy now
        late = await asyncio.gather(
            *(limiter.admit(checks(team), f"late-{team}", 60_000) for team in teams.values()),
            return_exceptions=True,
        )
        assert [await task for task in busy] == [b":1\r\n"] * 3
        await asyncio.sleep(0.2)  # the held admissions have run by now
    finally:
        await limiter.close()

    assert all(isinstance(outcome, LimiterUnavailable) for outcome in late), late
    for port, team in teams.items():
        node = redis_cluster.node(port)
        assert node.command("EXISTS", f"llmgw:{{{team}}}:inflight") == b":0\r\n", team
        assert node.command("EXISTS", f"llmgw:{{{team}}}:tpm") == b":0\r\n", team
