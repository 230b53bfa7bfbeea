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
    redis_limited_config,
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
    """Deadlines a loaded machine keeps, and no access lines (thousands of requests)."""
    rate.setdefault("redis_timeout_ms", 1000)
    raw = redis_limited_config(upstream_url, redis_url, limits, **rate)
    raw["server"]["log_level"] = "warning"
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
    # Per request, 1,000 calls each time; with slices a few dozen (typically 20-40: the
    # slices, their returns, and the requests decided by Redis while a slice was on its
    # way, which a loaded machine makes more of; hence the margin).
    print(f"Redis calls for 1000 requests: {cold} from cold, {calls} warm")
    assert cold <= 70, cold
    assert calls <= 70, calls


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


def members(redis: RedisProcess, key: str) -> int:
    reply = redis.command("ZCARD", key)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


async def test_what_a_stopped_process_held_unused_goes_back_to_redis(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    limits = {"requests_per_minute": 10_000, "max_concurrent": 200}
    # Slices that would live 30 s: only the stop gives them back.
    raw = limited(upstream.url, redis_server.url, limits, slice_ttl_ms=30_000)
    first = start_gateway_process(tmp_path, raw=raw)
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, first.url))[0] == 200  # Redis decides; slices follow
            await asyncio.sleep(0.3)
            assert (await post(session, first.url))[0] == 200  # from the slices
            await asyncio.sleep(0.1)
        held = {"slots": members(redis_server, f"{TEAM}:inflight")}
        held["tickets"] = members(redis_server, f"{TEAM}:tickets")
    finally:
        assert first.stop() == 0
    left = {"slots": members(redis_server, f"{TEAM}:inflight")}
    left["tickets"] = members(redis_server, f"{TEAM}:tickets")
    # Another process can now hold every slot: 200 in flight at once, and not one more.
    other = RedisLimiter(RateLimitConfig(slices=False, redis_timeout_ms=1000), redis_server.url)
    slots = LimitCheck(LimitKind.CONCURRENCY, f"{TEAM}:inflight", limits["max_concurrent"])
    admitted = [(await other.admit([slots], f"other-{i}", 60_000))[0].allowed for i in range(201)]
    await other.close()

    # The stopped process held a slice of each limit: 8 lease members in Redis (none in
    # use) and the requests slice's ticket.
    assert held == {"slots": 8, "tickets": 1}, held
    assert left == {"slots": 0, "tickets": 0}, left  # all given back on the way out
    assert admitted == [True] * 200 + [False]


async def test_an_expired_slice_gives_back_what_it_did_not_use(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    limit = 2_000_000  # tokens per minute
    gateway = await start_gateway(
        limited(upstream.url, redis_server.url, {"tokens_per_minute": limit}, slice_ttl_ms=300)
    )
    peek = RedisLimiter(RateLimitConfig(redis_timeout_ms=1000), redis_server.url)
    tpm = LimitCheck(LimitKind.TOKENS, f"{TEAM}:tpm", limit)
    body = chat_body(max_tokens=10_000)  # reserves 10,007: a slice is 8 of those at least
    async with aiohttp.ClientSession() as session:

        async def ask() -> int:
            async with session.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers=auth()
            ) as resp:
                await resp.read()
                return resp.status

        assert await ask() == 200  # Redis decides; a slice follows
        await asyncio.sleep(0.1)
        assert [await ask() for _ in range(3)] == [200] * 3  # from the slice
        held = await peek.remaining(tpm)
        tickets = members(redis_server, f"{TEAM}:tickets")
        started = time.monotonic()
        while members(redis_server, f"{TEAM}:tickets") and time.monotonic() - started < 2:
            await asyncio.sleep(0.02)
        given_back = time.monotonic() - started
        after = await peek.remaining(tpm)
    await peek.close()

    assert tickets == 1  # the slice's
    # Held by the process: a slice of 80,056 at least (less what refilled since: 33,333 a
    # second).
    assert held <= limit - 50_000, held
    assert given_back < 0.3 + 0.5  # it expired, and its return was applied
    # What it held unused is back: only the requests' real usage is spent.
    assert after >= limit - 1000, after


async def test_a_live_slice_admits_while_redis_is_down_then_the_failure_mode_applies(
    start_gateway: StartGateway, upstream: RunningUpstream, own_redis: RedisProcess
) -> None:
    gateway = await start_gateway(
        limited(
            upstream.url,
            own_redis.url,
            {"requests_per_minute": 1_000_000},
            failure_mode="closed",
            redis_timeout_ms=100,
            slice_ttl_ms=1500,
        )
    )
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gateway.url))[0] == 200  # Redis decides; a slice follows
        await asyncio.sleep(0.2)
        own_redis.kill()
        killed = time.monotonic()
        during = [await post(session, gateway.url) for _ in range(3)]  # the slice holds 8
        await asyncio.sleep(max(0.0, killed + 1.5 - time.monotonic()))
        after = await post(session, gateway.url)

    # Paid for before Redis died: admitted, with the limit's headers, until it expires.
    assert [(status, "x-ratelimit-limit-requests" in h) for status, h in during] == [
        (200, True)
    ] * 3
    assert after[0] == 503  # then every request is a Redis call again: failure_mode closed
