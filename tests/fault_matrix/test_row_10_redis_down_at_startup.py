"""Row 10: Redis is down when the gateway starts (a closed port, or a blackhole: a proxy
that accepts connections and swallows every byte).

Best in class: the gateway starts anyway, within a bounded warm-up; authentication is
unaffected; the limiter runs in its configured failure mode (open: admit without limits;
closed: 503 `rate_limiter_unavailable`, the upstream never called); `/readyz` stays 200
but says the limiter is degraded (`rate_limiter: redis-unavailable`)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    StartProxy,
    auth,
    chat_body,
    config_dict,
    free_port,
    metric,
    post_chat,
)

DEADLINE_S = 0.05  # rate_limits.redis_timeout_ms, the default
SLACK = 0.5  # a shared two-core machine


async def redis_url(kind: str, start_proxy: StartProxy, request: pytest.FixtureRequest) -> str:
    if kind == "closed_port":
        return f"redis://127.0.0.1:{free_port()}/0"
    redis: RedisProcess = request.getfixturevalue("redis_server")
    proxy = await start_proxy(redis.port)
    proxy.blackhole()
    return f"redis://127.0.0.1:{proxy.port}/0"


def limited(upstream: RunningUpstream, url: str, failure_mode: str) -> dict[str, Any]:
    raw = config_dict(upstream.url)
    raw["rate_limits"] = {"redis_url": url, "failure_mode": failure_mode}
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 2}
    return raw


async def readyz(gateway: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("kind", ["closed_port", "blackhole"])
@pytest.mark.parametrize("failure_mode", ["open", "closed"])
async def test_row_10_gateway_starts_without_redis_and_serves_in_its_failure_mode(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    start_proxy: StartProxy,
    request: pytest.FixtureRequest,
    kind: str,
    failure_mode: str,
) -> None:
    url = await redis_url(kind, start_proxy, request)

    started = time.monotonic()
    gateway = await start_gateway(limited(upstream, url, failure_mode))
    start_s = time.monotonic() - started

    assert start_s < 1.0 + SLACK  # the warm-up gives up after at most 1 s
    status, ready = await readyz(gateway)
    assert (status, ready["status"]) == (200, "ready")

    # Authentication never depends on Redis.
    no_key = await post_chat(gateway, chat_body(), headers={})
    bad_key = await post_chat(gateway, chat_body(), headers=auth("gw-not-a-key"))
    assert [no_key.status, bad_key.status] == [401, 401]
    assert no_key.json() == bad_key.json()

    # Four requests of a team limited to 2 per minute, each decided within the deadline.
    replies, latencies = [], []
    for _ in range(4):
        started = time.monotonic()
        replies.append(await post_chat(gateway, chat_body()))
        latencies.append(time.monotonic() - started)

    assert max(latencies) < DEADLINE_S + SLACK
    if failure_mode == "open":
        assert [r.status for r in replies] == [200] * 4  # admitted, without limits
        assert all("x-ratelimit-limit-requests" not in r.headers for r in replies)
        assert await metric(gateway, "llm_gateway_rate_limiter_fail_open_total") == 4
        assert len(upstream.state.requests) == 4
    else:
        assert [r.status for r in replies] == [503] * 4
        assert {r.json()["error"]["code"] for r in replies} == {"rate_limiter_unavailable"}
        assert upstream.state.requests == []
    assert await metric(gateway, "llm_gateway_rate_limiter_errors_total") == 4
    status, ready = await readyz(gateway)
    assert (status, ready["rate_limiter"]) == (200, "redis-unavailable")
    assert len(gateway.log_records("rate_limiter_unavailable")) == 1  # once per interval


async def test_row_10_readiness_says_degraded_from_the_start(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(
        limited(upstream, f"redis://127.0.0.1:{free_port()}/0", failure_mode="open")
    )

    status, ready = await readyz(gateway)  # before any request

    assert status == 200
    assert ready["rate_limiter"] == "redis-unavailable"
