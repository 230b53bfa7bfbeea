"""Row 13: Redis is slow: latency on the network (fault proxy delay), a server that stops
answering its clients for a while (CLIENT PAUSE), or one busy with a long command (DEBUG
SLEEP).

Best in class: each admission waits at most the per-call deadline (`redis_timeout_ms`),
then the configured failure mode applies (open: admitted without limits; closed: 503
`rate_limiter_unavailable`); request latency stays bounded; when Redis is fast again the
limiter decides again within one retry interval. One late answer alone does not stop the
limiting of everyone (the module's own contract: three misses in a row open the breaker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    StartProxy,
    chat_body,
    config_dict,
    post_chat,
)

DEADLINE_S = 0.1
RETRY_INTERVAL_S = 0.3
SLOW_S = 0.6  # how long each fault lasts
SLACK = 0.4  # a shared two-core machine


@pytest.fixture
def debug_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server that accepts DEBUG (Redis 7 refuses it by default): the fixture's
    own binary, behind a wrapper that adds the option."""
    server = RedisProcess(tmp_path)
    wrapper = tmp_path / "redis-server-debug"
    wrapper.write_text(f'#!/bin/sh\nexec {server.binary} "$@" --enable-debug-command yes\n')
    wrapper.chmod(0o755)
    server.binary = str(wrapper)
    server.start()
    yield server
    if server.process is not None:
        server.kill()


async def start(
    start_gateway: StartGateway, upstream: RunningUpstream, port: int, failure_mode: str
) -> RunningGateway:
    raw = config_dict(upstream.url)
    raw["rate_limits"] = {
        "redis_url": f"redis://127.0.0.1:{port}/0",
        "failure_mode": failure_mode,
        "redis_timeout_ms": DEADLINE_S * 1000,
        "redis_retry_interval_s": RETRY_INTERVAL_S,
        # Every admission a Redis call: this row is about what a slow call costs. (With
        # budget slices a live slice admits without Redis until it expires: see
        # tests/integration/test_budget_slices.py.)
        "slices": False,
    }
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 1_000_000}
    return await start_gateway(raw)


async def timed(gateway: RunningGateway) -> tuple[int, bool, float]:
    """Status, whether Redis decided (its headers are on the answer), seconds taken."""
    started = time.monotonic()
    reply = await post_chat(gateway, chat_body())
    return reply.status, "x-ratelimit-limit-requests" in reply.headers, time.monotonic() - started


@pytest.mark.parametrize(
    ("fault", "failure_mode"),
    [
        ("proxy_delay", "open"),
        ("proxy_delay", "closed"),
        ("client_pause", "open"),
        ("debug_sleep", "closed"),
    ],
)
async def test_row_13_slow_redis_costs_the_deadline_then_the_failure_mode(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    start_proxy: StartProxy,
    request: pytest.FixtureRequest,
    fault: str,
    failure_mode: str,
) -> None:
    redis: RedisProcess = request.getfixturevalue(
        "debug_redis" if fault == "debug_sleep" else "redis_server"
    )
    proxy = await start_proxy(redis.port)
    gateway = await start(start_gateway, upstream, proxy.port, failure_mode)
    assert (await timed(gateway))[:2] == (200, True)

    sleeping = None
    slow_until = time.monotonic() + SLOW_S
    if fault == "proxy_delay":
        proxy.delay(SLOW_S)
    elif fault == "client_pause":
        assert redis.command("CLIENT", "PAUSE", str(int(SLOW_S * 1000)), "ALL") == b"+OK\r\n"
    else:  # the server itself is busy; the reply to DEBUG comes when it is done
        sleeping = asyncio.create_task(
            asyncio.to_thread(redis.command, "DEBUG", "SLEEP", str(SLOW_S))
        )
        await asyncio.sleep(0.05)
    slow = []
    while time.monotonic() < slow_until - DEADLINE_S - 0.1:
        slow.append(await timed(gateway))
    proxy.heal()
    upstream_calls = len(upstream.state.requests)
    if sleeping is not None:
        assert await sleeping == b"+OK\r\n"
    await asyncio.sleep(max(0.0, slow_until - time.monotonic()) + RETRY_INTERVAL_S + 0.05)
    healed = [await timed(gateway) for _ in range(3)]

    expected = 200 if failure_mode == "open" else 503
    assert len(slow) >= 3
    assert {(status, by_redis) for status, by_redis, _ in slow} == {(expected, False)}
    # Each request waited the deadline at most, never for the slow Redis.
    assert max(seconds for _, _, seconds in slow) < DEADLINE_S + SLACK
    if failure_mode == "closed":
        assert upstream_calls == 1  # the refused ones never reached it
    assert [(status, by_redis) for status, by_redis, _ in healed] == [(200, True)] * 3


async def test_row_13_one_late_answer_does_not_open_the_breaker(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    redis_server: RedisProcess,
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(redis_server.port)
    gateway = await start(start_gateway, upstream, proxy.port, failure_mode="closed")
    assert (await timed(gateway))[:2] == (200, True)

    proxy.delay(2 * DEADLINE_S)
    late = await timed(gateway)  # one answer misses the deadline
    proxy.heal()
    after = await timed(gateway)

    assert late[:2] == (503, False)
    assert after[:2] == (200, True)  # Redis is fast again: it decides, no 503 for a while
