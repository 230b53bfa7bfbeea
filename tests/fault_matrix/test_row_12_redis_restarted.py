"""Row 12: Redis restarted: its script cache flushed (SCRIPT FLUSH), or the whole server
shut down without saving and started again (SHUTDOWN NOSAVE, state and scripts lost).

Best in class: NOSCRIPT is answered by loading the script again, within the same call
(no request falls back to the failure mode for it); after a restart the limits work again
by themselves, and what the lost state can cost is bounded by one window: a team that had
spent its budget gets at most one more budget's worth, never an unlimited stretch."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

import pytest

from gateway.limiter.redis import LIMIT
from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    metric,
    post_chat,
    redis_limited_config,
)

LIMIT_SHA = hashlib.sha1(LIMIT.encode(), usedforsecurity=False).hexdigest()
PER_MINUTE = 3


def script_loaded(redis: RedisProcess) -> bool:
    reply = redis.command("SCRIPT", "EXISTS", LIMIT_SHA)
    assert reply.startswith(b"*1\r\n:"), reply
    return reply == b"*1\r\n:1\r\n"


def limited(upstream: RunningUpstream, redis: RedisProcess, **rate: Any) -> dict[str, Any]:
    rate.setdefault("redis_timeout_ms", 500)
    limits = {"requests_per_minute": PER_MINUTE}
    return redis_limited_config(upstream.url, redis.url, limits, **rate)


async def restart_without_state(redis: RedisProcess) -> None:
    """SHUTDOWN NOSAVE, then a new redis-server on the same port: no keys, no scripts. The
    event loop keeps running meanwhile, as a gateway's does (it sees its connections
    closed)."""
    with contextlib.suppress(OSError):  # Redis closes the connection without a reply
        redis.command("SHUTDOWN", "NOSAVE")
    assert redis.process is not None
    await asyncio.to_thread(redis.process.wait, 10)
    await asyncio.sleep(0.05)
    await asyncio.to_thread(redis.start)
    assert not script_loaded(redis)


async def decided(gateway: RunningGateway) -> tuple[int, bool]:
    """Status, and whether Redis decided (its rate-limit headers are on the answer)."""
    reply = await post_chat(gateway, chat_body())
    return reply.status, "x-ratelimit-limit-requests" in reply.headers


async def test_row_12_flushed_script_cache_is_reloaded_within_the_call(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    gateway = await start_gateway(limited(upstream, redis_server))
    assert await decided(gateway) == (200, True)

    assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
    assert not script_loaded(redis_server)
    # Several pooled connections meet NOSCRIPT at once.
    results = await asyncio.gather(*(decided(gateway) for _ in range(6)))

    assert sorted(results) == [(200, True)] * (PER_MINUTE - 1) + [(429, True)] * 4
    assert script_loaded(redis_server)
    assert await metric(gateway, "llm_gateway_rate_limiter_errors_total") == 0
    assert gateway.log_records("rate_limiter_unavailable") == []


@pytest.mark.parametrize("failure_mode", ["closed", "open"])
async def test_row_12_restart_without_state_over_admits_one_window_at_most(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    own_redis: RedisProcess,
    failure_mode: str,
) -> None:
    gateway = await start_gateway(
        limited(upstream, own_redis, failure_mode=failure_mode, redis_retry_interval_s=0.2)
    )
    spent = [await decided(gateway) for _ in range(PER_MINUTE + 1)]
    assert spent == [(200, True)] * PER_MINUTE + [(429, True)]

    await restart_without_state(own_redis)

    # Until Redis decides again (a pooled connection to the old server may fail first).
    after: list[tuple[int, bool]] = []
    for _ in range(100):
        after.append(await decided(gateway))
        if after[-1][1]:
            break
        await asyncio.sleep(0.02)
    fallback, first = after[:-1], after[-1]
    rest = [await decided(gateway) for _ in range(PER_MINUTE + 1)]

    assert first[1], "Redis never decided again"
    assert len(fallback) <= 10  # one retry interval (0.2 s) of the failure mode at most
    assert set(fallback) <= {(200 if failure_mode == "open" else 503, False)}
    # The lost state costs one window: the team gets its 3 again, then 429 again.
    assert [first, *rest][: PER_MINUTE + 1] == [(200, True)] * PER_MINUTE + [(429, True)]
    assert rest[-1] == (429, True)
    assert script_loaded(own_redis)  # NOSCRIPT on the new server loaded it


async def test_row_12_first_request_after_a_quiet_restart_is_decided_by_redis(
    start_gateway: StartGateway, upstream: RunningUpstream, own_redis: RedisProcess
) -> None:
    """No request during the downtime: nothing could tell the gateway Redis was gone, and
    Redis is back before the next request, which Redis should decide."""
    gateway = await start_gateway(limited(upstream, own_redis, failure_mode="open"))
    assert await decided(gateway) == (200, True)

    await restart_without_state(own_redis)

    assert await decided(gateway) == (200, True)
    assert gateway.log_records("rate_limiter_unavailable") == []
