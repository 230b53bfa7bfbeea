"""A slow Redis behind the fault proxy: an admission script that runs after its caller gave
up takes nothing, a lease whose answer came too late is released anyway, and once Redis is
fast again no lease outlives its request, so a team is never locked out by its own past."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimiterUnavailable, LimitKind
from gateway.limiter.redis import RedisLimiter
from gateway.testing.fault_proxy import FaultProxy
from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
)

TEAM = "llmgw:{team-a}"
ZSETS = (f"{TEAM}:inflight", f"{TEAM}:tickets")


@pytest.fixture
async def proxy(redis_server: RedisProcess) -> AsyncIterator[FaultProxy]:
    running = FaultProxy("127.0.0.1", redis_server.port)
    await running.start()
    yield running
    await running.close()


def members(redis_server: RedisProcess, key: str) -> int:
    reply = redis_server.command("ZCARD", key)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


async def until_no_member(redis_server: RedisProcess, seconds: float) -> dict[str, int]:
    """Waits (up to `seconds`) for the team's lease and ticket sets to empty; what is left."""
    deadline = time.monotonic() + seconds
    while True:
        left = {key: members(redis_server, key) for key in ZSETS}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


async def start_behind_proxy(
    start_gateway: StartGateway, upstream: RunningUpstream, proxy: FaultProxy, tokens: int
) -> RunningGateway:
    raw = config_dict(upstream.url)
    raw["rate_limits"] = {
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
        "redis_timeout_ms": 100,
        "redis_retry_interval_s": 0.2,
    }
    raw["teams"]["team-a"]["limits"] = {"max_concurrent": 10, "tokens_per_minute": tokens}
    return await start_gateway(raw)


async def post(
    session: aiohttp.ClientSession, gateway: RunningGateway, max_tokens: int = 100
) -> aiohttp.ClientResponse:
    async with session.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat_body(max_tokens=max_tokens),
        headers=auth(),
    ) as resp:
        await resp.read()
        return resp


async def test_script_that_runs_after_its_callers_deadline_takes_nothing(
    proxy: FaultProxy, redis_server: RedisProcess
) -> None:
    limiter = RedisLimiter(
        RateLimitConfig(redis_timeout_ms=50), f"redis://127.0.0.1:{proxy.port}/0"
    )
    await limiter.warm_up()  # learns how Redis's clock relates to ours
    slots = LimitCheck(LimitKind.CONCURRENCY, f"{TEAM}:inflight", 10)
    tokens = LimitCheck(LimitKind.TOKENS, f"{TEAM}:tpm", 10_000, cost=500)
    proxy.delay(0.2, to_client=False)  # the script reaches Redis 150 ms after the deadline

    with pytest.raises(LimiterUnavailable):
        await limiter.admit([slots, tokens], "late-lease", 60_000)
    await asyncio.sleep(0.5)  # it has run on Redis by now
    proxy.heal()

    assert members(redis_server, f"{TEAM}:inflight") == 0
    assert redis_server.command("EXISTS", f"{TEAM}:tpm") == b":0\r\n"
    await limiter.close()


async def test_lease_whose_answer_came_too_late_is_released(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    proxy: FaultProxy,
    redis_server: RedisProcess,
) -> None:
    gateway = await start_behind_proxy(start_gateway, upstream, proxy, tokens=10_000)
    reserved = 4 + 3 + 1000  # prompt estimate of "hello there" and max_tokens
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gateway)).status == 200  # the clock offset is known
        # Scripts run in time and take their lease; their answers arrive after the deadline.
        proxy.delay(0.3, to_server=False)
        late = [(await post(session, gateway, max_tokens=1000)).status for _ in range(3)]
        await asyncio.sleep(0.4)
        proxy.heal()
        left = await until_no_member(redis_server, 2.0)
        # The give-backs are sent once the late calls' deadlines have passed, and may meet
        # the delay still (a miss that opens the breaker again for a retry interval): the
        # first request Redis decides again is the one that shows what is charged.
        after = await post(session, gateway, max_tokens=1000)
        healed = time.monotonic()
        while "x-ratelimit-remaining-tokens" not in after.headers:
            assert time.monotonic() - healed < 2.0, "Redis did not decide again within 2 s"
            await asyncio.sleep(0.05)
            after = await post(session, gateway, max_tokens=1000)

    assert late == [200, 200, 200]  # failure_mode open: admitted without limits
    assert left == dict.fromkeys(ZSETS, 0)
    assert after.status == 200
    # Their reservations were given back too: all that is charged is the first request's
    # few tokens and `after`'s reservation, not three more reservations.
    assert int(after.headers["x-ratelimit-remaining-tokens"]) >= 10_000 - reserved - 10


async def test_team_is_admitted_again_within_a_second_after_8s_of_a_slow_redis(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    proxy: FaultProxy,
    redis_server: RedisProcess,
) -> None:
    gateway = await start_behind_proxy(start_gateway, upstream, proxy, tokens=10_000_000)
    statuses: list[int] = []

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            statuses.append((await post(session, gateway)).status)
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as session:
        # Busy first: the gateway holds a warm pool of Redis connections (one per
        # concurrent admission) when Redis turns slow, and each of them carries one more
        # script that reaches Redis late.
        warm = await asyncio.gather(*(post(session, gateway) for _ in range(16)))
        assert {resp.status for resp in warm} <= {200, 429}
        proxy.delay(0.2)
        until = time.monotonic() + 8
        await asyncio.gather(*(client(session, until) for _ in range(16)))
        proxy.heal()

        healed = time.monotonic()
        after: list[tuple[int, bool]] = []
        while time.monotonic() - healed < 3:
            resp = await post(session, gateway)
            decided = "x-ratelimit-limit-tokens" in resp.headers  # Redis decided, not fail-open
            after.append((resp.status, decided))
            if decided:
                break
            await asyncio.sleep(0.05)
        admitted_after = time.monotonic() - healed
        left = await until_no_member(redis_server, 2.0)

    assert len(statuses) > 16 * 8  # the slow period saw traffic from every client
    assert after[-1] == (200, True), after
    assert admitted_after < 1.0, after
    assert left == dict.fromkeys(ZSETS, 0)
