"""Row 6: an upstream answers 429 or 503 with Retry-After.

Best in class: the Retry-After is honoured (the retry waits at least that long) when it
fits the call's deadline and `retries.max_retry_after_s`; otherwise the client gets it
at once, as 429 + Retry-After, and is trusted to come back. Consecutive 5xx eject the
upstream, for longer each time it fails again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    metric,
    post_chat,
)

SLACK = 0.5  # a shared two-core machine: "about X s" is asserted as "before X + SLACK"


async def timed_post(gateway: RunningGateway) -> tuple[int, dict[str, str], Any, float]:
    started = time.monotonic()
    reply = await post_chat(gateway, chat_body())
    return reply.status, reply.headers, reply.json(), time.monotonic() - started


@pytest.mark.parametrize(("status", "retry_after"), [(429, "1"), (503, "0.5")])
async def test_row_06_retry_after_that_fits_is_waited_then_retried(
    gateway: RunningGateway, upstream: RunningUpstream, status: int, retry_after: str
) -> None:
    upstream.state.script.append(Behavior(status=status, retry_after=retry_after))

    got, _, body, elapsed = await timed_post(gateway)

    assert got == 200 and body["choices"][0]["message"]["content"] == "echo: hello there"
    assert len(upstream.state.requests) == 2
    # The retry waited the upstream's Retry-After, not a 25 ms backoff.
    assert float(retry_after) <= elapsed < float(retry_after) + SLACK


async def test_row_06_retry_after_beyond_the_longest_wait_is_a_429_passed_through(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(status=429, retry_after="30")  # max_retry_after_s is 2

    got, headers, body, elapsed = await timed_post(gateway)

    assert got == 429
    assert headers["Retry-After"] == "30"
    assert body["error"]["code"] == "upstream_rate_limited"
    assert len(upstream.state.requests) == 1
    assert elapsed < SLACK


async def test_row_06_retry_after_beyond_the_deadline_is_a_429_passed_through(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["retries"] = {"deadline_s": 0.5}  # a 1 s wait is allowed, but not within 0.5 s
    gateway = await start_gateway(raw)
    upstream.state.default = Behavior(status=429, retry_after="1")

    got, headers, _, elapsed = await timed_post(gateway)

    assert (got, headers["Retry-After"]) == (429, "1")
    assert len(upstream.state.requests) == 1
    assert elapsed < 0.5


async def test_row_06_overload_with_a_long_retry_after_is_answered_at_once(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(status=503, retry_after="30")

    got, _, body, elapsed = await timed_post(gateway)

    assert (got, body["error"]["code"]) == (503, "upstream_unavailable")
    assert len(upstream.state.requests) == 1  # not waited, not retried
    assert elapsed < SLACK


async def health_of(gateway: RunningGateway, name: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        state: dict[str, Any] = (await resp.json())["upstreams"][name]
        return state


async def until_requests_reach(
    gateway: RunningGateway, failing: RunningUpstream, count: int, most: int = 200
) -> None:
    """Posts (each answered 200, by the other upstream if need be) until `failing` has
    received `count` requests."""
    for _ in range(most):
        if len(failing.state.requests) >= count:
            return
        assert (await post_chat(gateway, chat_body())).status == 200
    raise AssertionError(f"{count} requests never reached the failing upstream")


async def test_row_06_consecutive_5xx_eject_for_a_doubling_time(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    """`fake-b` answers 503: ejected after 2 in a row for 0.4 s; its first request after
    the cool-down (probation) fails, which ejects it again at once, for 0.8 s; once it
    answers again, one success restores it."""
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake-b"] = {
        **raw["upstreams"]["fake"],
        "base_url": f"{spare_upstream.url}/v1",
    }
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "fake", "model": UPSTREAM_MODEL},
        {"upstream": "fake-b", "model": UPSTREAM_MODEL},
    ]
    raw["health"] = {"consecutive_failures": 2, "base_ejection_s": 0.4, "max_ejection_s": 10}
    gateway = await start_gateway(raw)
    spare_upstream.state.default = Behavior(status=503)

    await until_requests_reach(gateway, spare_upstream, 2)
    first = await health_of(gateway, "fake-b")
    await asyncio.sleep(0.45)
    assert (await health_of(gateway, "fake-b"))["state"] == "probation"
    await until_requests_reach(gateway, spare_upstream, 3)
    second = await health_of(gateway, "fake-b")

    assert (first["state"], first["ejections"]) == ("ejected", 1)
    assert 0.4 - SLACK / 2 < first["ejected_for_s"] <= 0.4
    assert (second["state"], second["ejections"]) == ("ejected", 2)  # one failed probe
    assert 0.8 - SLACK / 2 < second["ejected_for_s"] <= 0.8
    assert len(spare_upstream.state.requests) == 3
    assert await metric(gateway, "llm_gateway_upstream_ejections_total", upstream="fake-b") == 2

    spare_upstream.state.default = Behavior()
    await asyncio.sleep(0.85)
    await until_requests_reach(gateway, spare_upstream, 4)
    restored = await health_of(gateway, "fake-b")
    assert (restored["state"], restored["ejections"]) == ("healthy", 0)
