"""A hung upstream costs one per-try timeout (`timeouts.first_byte`, `timeouts.idle` before
the answer is committed), then the call is retried on another upstream, within the retry
budget and the call's deadline (`retries.deadline_s`); when nothing can answer, the client
gets a 504 within about the deadline. Nothing is retried once it reached the client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
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
    auth,
    chat_body,
    config_dict,
    metric,
    post_chat,
    serve_fake_upstream,
)

PER_TRY = 0.3  # first_byte and idle of every upstream here
# The machine is shared and noisy: an answer "in about PER_TRY" is one before this.
SLACK = 0.7
# The first upstream is drawn first with a probability of 1 - 1e-6: the retry, not the
# balancer's luck, is what lets the other one serve.
FIRST_CHOICE = 1_000_000


def upstreams_config(*servers: RunningUpstream, per_try: float = PER_TRY, **sections: Any) -> Any:
    """MODEL served by `up-0`, `up-1`, ... on `servers`, the first one drawn first."""
    raw = config_dict(servers[0].url)
    base = raw["upstreams"]["fake"]
    timeouts = {"connect": 1, "first_byte": per_try, "idle": per_try, "total": 30}
    targets = []
    for i, server in enumerate(servers):
        raw["upstreams"][f"up-{i}"] = {
            **base,
            "base_url": f"{server.url}/v1",
            "timeouts": timeouts,
        }
        weight = FIRST_CHOICE if i == 0 else 1
        targets.append({"upstream": f"up-{i}", "model": UPSTREAM_MODEL, "weight": weight})
    raw["models"][MODEL]["upstreams"] = targets
    raw.update(sections)
    return raw


async def eventually(condition: Callable[[], object], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)


async def chat(gateway: RunningGateway, stream: bool) -> tuple[int, bytes, float]:
    """Status, whole body and seconds until the body was complete."""
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(stream=stream, messages=[{"role": "user", "content": "a b c"}]),
            headers=auth(),
        ) as resp,
    ):
        body = await resp.read()
    return resp.status, body, time.perf_counter() - started


@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        ("hang", False),  # no headers
        ("hang", True),
        ("stall_body", False),  # headers and half the answer, then silence past idle
        ("stall_after=0", True),  # headers, then no first event
    ],
)
async def test_a_hung_upstream_is_retried_on_another_after_one_per_try_timeout(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    fault: str,
    stream: bool,
) -> None:
    gateway = await start_gateway(upstreams_config(upstream, spare_upstream))
    upstream.state.default = Behavior.parse(fault)

    status, body, elapsed = await chat(gateway, stream)

    assert status == 200
    assert b"echo:" in body and (not stream or body.endswith(b"data: [DONE]\n\n"))
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 1)
    assert PER_TRY <= elapsed < PER_TRY + SLACK  # one per-try timeout, then the answer
    # The gateway hung up on the stuck upstream instead of keeping its connection.
    await eventually(lambda: upstream.state.disconnected)
    retries = "llm_gateway_upstream_retries_total"
    assert await metric(gateway, retries, model=MODEL, upstream="up-0", reason="timeout") == 1


@pytest.fixture
async def third_upstream() -> AsyncIterator[RunningUpstream]:
    async with serve_fake_upstream() as running:
        yield running


async def test_when_every_upstream_hangs_the_504_comes_at_the_deadline(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    third_upstream: RunningUpstream,
) -> None:
    servers = (upstream, spare_upstream, third_upstream)
    gateway = await start_gateway(
        upstreams_config(*servers, per_try=0.6, retries={"deadline_s": 0.9})
    )
    for server in servers:
        server.state.default = Behavior(hang=True)

    status, body, elapsed = await chat(gateway, stream=False)
    attempts = sum(len(server.state.requests) for server in servers)
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        health = (await resp.json())["upstreams"]

    assert status == 504
    assert b'"code":"upstream_timeout"' in body
    # The first try waits its whole 0.6 s, the second only what is left of the 0.9 s;
    # three tries of 0.6 s each would take 1.8 s.
    assert 0.9 <= elapsed < 0.9 + SLACK
    assert attempts == 2
    # Only the try that used its own first_byte counts against its upstream: the one cut
    # short by the call's deadline says nothing about the upstream's health.
    failures = sorted(health[f"up-{i}"]["consecutive_failures"] for i in range(3))
    assert failures == [0, 0, 1]


async def test_a_timeout_is_not_retried_when_the_retry_budget_is_spent(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(
        upstreams_config(upstream, spare_upstream, retries={"budget_ratio": 0, "budget_min": 0})
    )
    upstream.state.default = Behavior(hang=True)

    status, body, elapsed = await chat(gateway, stream=False)

    assert status == 504
    assert b'"code":"upstream_timeout"' in body
    assert PER_TRY <= elapsed < PER_TRY + SLACK
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 0)
    assert await metric(gateway, "llm_gateway_upstream_retries_over_budget_total") == 1


async def test_a_stream_that_stalls_after_its_first_event_is_never_retried(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(upstreams_config(upstream, spare_upstream))
    upstream.state.default = Behavior(stall_after=1)

    status, body, _ = await chat(gateway, stream=True)

    assert status == 200  # the stream had started: it can only end with an error event
    assert body.count(b'"echo:"') == 1
    assert body.endswith(b'"code":"upstream_timeout"}}\n\n')
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 0)


async def test_a_retry_after_beyond_the_deadline_is_passed_to_the_client_at_once(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    # One second is within max_retry_after_s (2 s), but not within the 0.5 s deadline.
    gateway = await start_gateway(
        upstreams_config(upstream, spare_upstream, retries={"deadline_s": 0.5})
    )
    upstream.state.default = Behavior(status=429, retry_after="1")

    started = time.perf_counter()
    reply = await post_chat(gateway, chat_body())
    elapsed = time.perf_counter() - started

    assert reply.status == 429
    assert reply.headers["Retry-After"] == "1"
    assert elapsed < 0.5
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 0)
