"""Budget slices (`gateway/limiter/slices.py`) against a real redis-server: at a high limit
a process admits almost every request from its slices, without a Redis call; what a slice
holds unused goes back to Redis when it expires or the process stops, so another process
can use the whole limit; small limits are still decided by Redis request by request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import RateLimitConfig
from gateway.limiter.base import LimitCheck, LimitKind
from gateway.limiter.redis import RedisLimiter
from tests.conftest import (
    RedisProcess,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    resp_text,
)
from tests.gateway_process import start_gateway_process

TEAM = "llmgw:{team-a}"


def script_calls(redis: RedisProcess) -> int:
    """EVALSHA calls the redis-server has run (INFO commandstats)."""
    for line in resp_text(redis.command("INFO", "commandstats")).splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def limited(
    upstream_url: str, redis_url: str, limits: dict[str, int], **rate: Any
) -> dict[str, Any]:
    raw = config_dict(upstream_url)
    raw["server"]["log_level"] = "warning"
    raw["rate_limits"] = {"redis_url": redis_url, "redis_timeout_ms": 1000, **rate}
    raw["teams"]["team-a"]["limits"] = limits
    return raw


async def post(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with session.post(
        f"{url}/v1/chat/completions", json=chat_body(max_tokens=10), headers=auth()
    ) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


async def test_a_thousand_requests_at_a_high_limit_cost_a_few_redis_calls(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    limits = {
        "requests_per_minute": 1_000_000,
        "tokens_per_minute": 100_000_000,
        "max_concurrent": 10_000,
    }
    gateway = await start_gateway(limited(upstream.url, redis_server.url, limits))
    async with aiohttp.ClientSession() as session:

        async def client(requests: int) -> list[tuple[int, dict[str, str]]]:
            return [await post(session, gateway.url) for _ in range(requests)]

        async def clients(requests: int) -> list[tuple[int, dict[str, str]]]:
            every = await asyncio.gather(*(client(requests // 10) for _ in range(10)))
            return [answer for answers in every for answer in answers]

        before = script_calls(redis_server)
        answers = await clients(1000)  # from cold: no slice yet
        cold = script_calls(redis_server) - before
        steady = await clients(1000)
        calls = script_calls(redis_server) - before - cold
    answers += steady
    assert [status for status, _ in answers] == [200] * 2000
    # Every answer carries the headers, as a limited team's answers always do.
    assert all("x-ratelimit-remaining-requests" in headers for _, headers in answers)
    # Per request, 1,000 calls each time; with slices, from cold a few dozen at most
    # (slices, their returns, and the requests decided by Redis before the first slices
    # arrived), and fewer once they are warm.
    assert cold <= 50, cold
    assert calls <= 30, calls


async def test_small_limits_are_decided_by_redis_request_by_request(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    gateway = await start_gateway(
        limited(upstream.url, redis_server.url, {"requests_per_minute": 100})
    )
    before = script_calls(redis_server)
    async with aiohttp.ClientSession() as session:
        answers = [await post(session, gateway.url) for _ in range(105)]
    calls = script_calls(redis_server) - before

    statuses = [status for status, _ in answers]
    assert statuses == [200] * 100 + [429] * 5
    assert calls >= 105  # one each (and the settlements' flushes)
    lefts = [int(headers["x-ratelimit-remaining-requests"]) for _, headers in answers[:100]]
    assert lefts == list(range(99, -1, -1))  # exact, as Redis reported it


async def test_what_a_stopped_process_held_unused_goes_back_to_redis(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    limit = 1000
    raw = limited(
        upstream.url, redis_server.url, {"requests_per_minute": limit}, slice_ttl_ms=30_000
    )
    first = start_gateway_process(tmp_path, raw=raw)
    try:
        async with aiohttp.ClientSession() as session:
            # A few requests: the process takes a slice (of 1/16 of what is left at most).
            for _ in range(8):
                assert (await post(session, first.url))[0] == 200
            await asyncio.sleep(0.3)
            peek = RedisLimiter(RateLimitConfig(), redis_server.url)
            rpm = LimitCheck(LimitKind.REQUESTS, f"{TEAM}:rpm", limit)
            held = await peek.remaining(rpm)
    finally:
        first.stop()
    after_stop = await peek.remaining(rpm)
    await peek.close()

    assert held < limit - 8  # a slice was taken from Redis
    # The slice's unused units came back when the process stopped (the slice would have
    # lived 30 s): all but the 8 requests it admitted (and a refill's rounding).
    assert limit - 8 - 1 <= after_stop <= limit - 8 + 1, (held, after_stop)


async def test_an_expired_slice_gives_back_what_it_did_not_use(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    limit = 1000
    gateway = await start_gateway(
        limited(upstream.url, redis_server.url, {"requests_per_minute": limit}, slice_ttl_ms=300)
    )
    peek = RedisLimiter(RateLimitConfig(), redis_server.url)
    rpm = LimitCheck(LimitKind.REQUESTS, f"{TEAM}:rpm", limit)
    async with aiohttp.ClientSession() as session:
        for _ in range(8):
            assert (await post(session, gateway.url))[0] == 200
        await asyncio.sleep(0.05)
        held = await peek.remaining(rpm)
        started = time.monotonic()
        while await peek.remaining(rpm) < limit - 8 - 1 and time.monotonic() - started < 2:
            await asyncio.sleep(0.02)
        given_back = time.monotonic() - started
        after = await peek.remaining(rpm)
    await peek.close()

    assert held < limit - 8 - 1  # the process held a slice
    assert after >= limit - 8 - 1  # it came back: only the 8 requests are spent
    assert given_back < 0.3 + 0.5
