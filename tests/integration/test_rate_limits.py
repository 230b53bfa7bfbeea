"""Rate limits per team (and per team and model), with OpenAI's headers, enforced the same
by both backends: the in-process one and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.appkeys import LIMITER
from gateway.limiter.base import LimitCheck, LimitKind
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
)

TEAM_KEYS = "llmgw:{team-a}"


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The Redis URL to configure, or None for the in-process backend."""
    if request.param == "memory":
        return None
    server: RedisProcess = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def start_limited(
    start_gateway: StartGateway, upstream: RunningUpstream, backend: str | None
) -> Any:
    async def start(limits: dict[str, Any], **model_limits: dict[str, Any]) -> RunningGateway:
        raw = config_dict(upstream.url)
        raw["rate_limits"] = {"redis_url": backend, "redis_timeout_ms": 500}
        raw["teams"]["team-a"]["limits"] = limits
        raw["teams"]["team-a"]["model_limits"] = {
            MODEL if name == "main" else name: value for name, value in model_limits.items()
        }
        return await start_gateway(raw)

    return start


async def call(
    gateway: RunningGateway, **params: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(**params), headers=auth()
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


async def remaining_tokens(gateway: RunningGateway, limit: int) -> int:
    check = LimitCheck(LimitKind.TOKENS, f"{TEAM_KEYS}:tpm", limit)
    return await gateway.server.app[LIMITER].remaining(check)


async def settled(gateway: RunningGateway) -> None:
    """Settling runs in the background after the answer: wait for it."""
    from gateway.appkeys import TASKS

    tasks = gateway.server.app[TASKS]
    deadline = time.monotonic() + 5
    while tasks.pending:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_requests_per_minute_admits_exactly_the_limit(start_limited: Any) -> None:
    gateway = await start_limited({"requests_per_minute": 3})

    answers = [await call(gateway) for _ in range(4)]

    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in answers] == ["2", "1", "0", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for _, h, _ in answers)
    _, headers, body = answers[3]
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    assert "requests per minute" in body["error"]["message"]
    # One request per 20 s refills; the first slot frees ~20 s after the first request.
    assert 18 <= int(headers["Retry-After"]) <= 21
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        metrics = await resp.text()
    assert (
        'llm_gateway_rate_limited_requests_total{limit="requests",'
        f'model="{MODEL}",team="team-a"}} 1.0'
    ) in metrics


async def test_every_response_of_a_limited_team_has_openai_headers(
    start_limited: Any, upstream: RunningUpstream
) -> None:
    gateway = await start_limited({"requests_per_minute": 100, "tokens_per_minute": 100_000})
    upstream.state.script.append(Behavior(status=500))  # not retried: the client gets 503

    for expected_status in (503, 200):
        status, headers, _ = await call(gateway)
        assert status == expected_status
        for kind in ("requests", "tokens"):
            assert headers[f"x-ratelimit-limit-{kind}"]
            assert int(headers[f"x-ratelimit-remaining-{kind}"]) >= 0
            assert headers[f"x-ratelimit-reset-{kind}"].endswith("s")


async def test_team_without_limits_gets_no_limit_headers(start_limited: Any) -> None:
    gateway = await start_limited({})

    status, headers, _ = await call(gateway)

    assert status == 200
    assert not [name for name in headers if name.startswith("x-ratelimit")]


async def test_model_limit_is_narrower_than_the_team_limit(start_limited: Any) -> None:
    gateway = await start_limited({"requests_per_minute": 100}, main={"requests_per_minute": 2})

    statuses = [(await call(gateway))[0] for _ in range(3)]
    other, headers, _ = await call(gateway, model=OPENAI_MODEL)

    assert statuses == [200, 200, 429]
    assert other == 200
    assert headers["x-ratelimit-limit-requests"] == "100"


async def test_tokens_are_charged_with_real_usage_after_the_call(start_limited: Any) -> None:
    limit = 60_000  # 1000 tokens a second refill: allow for the test's own duration
    gateway = await start_limited({"tokens_per_minute": limit})

    started = time.monotonic()
    status, headers, body = await call(gateway, max_tokens=5000)
    reserved = limit - int(headers["x-ratelimit-remaining-tokens"])
    await settled(gateway)
    left = await remaining_tokens(gateway, limit)
    refill = (time.monotonic() - started) * limit / 60 + 2

    used = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert status == 200
    assert reserved >= 5000  # the whole max_tokens was reserved up front...
    assert limit - used - 2 <= left <= limit - used + refill  # ...and only usage charged


async def test_stream_is_charged_with_the_usage_the_gateway_asked_for(
    start_limited: Any, upstream: RunningUpstream
) -> None:
    limit = 60_000
    gateway = await start_limited({"tokens_per_minute": limit})
    words = " ".join(f"w{i}" for i in range(40))

    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(
                stream=True, max_tokens=3000, messages=[{"role": "user", "content": words}]
            ),
            headers=auth(),
        ) as resp,
    ):
        raw = await resp.read()
    await settled(gateway)
    left = await remaining_tokens(gateway, limit)
    refill = (time.monotonic() - started) * limit / 60 + 2

    # The client did not ask for usage: the gateway asked, used it, and kept it to itself.
    assert upstream.state.requests[-1].body["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")
    used = 40 + 41  # 40 prompt words; "echo:" and 40 words back
    assert limit - used - 2 <= left <= limit - used + refill


async def test_client_that_leaves_mid_stream_is_charged_for_what_was_relayed(
    start_limited: Any, upstream: RunningUpstream
) -> None:
    limit = 60_000
    gateway = await start_limited({"tokens_per_minute": limit})
    upstream.state.default = Behavior(delay=0.05)
    words = " ".join(f"w{i}" for i in range(100))

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(
                stream=True, max_tokens=3000, messages=[{"role": "user", "content": words}]
            ),
            headers=auth(),
        )
        for _ in range(4):  # the role event and three words
            await resp.content.readuntil(b"\n\n")
        resp.close()
    await asyncio.sleep(0.2)
    await settled(gateway)
    left = await remaining_tokens(gateway, limit)
    refill = (time.monotonic() - started) * limit / 60 + 2

    charged = limit - left
    prompt_estimate = 4 + -(-len(words) // 4)
    # Prompt estimate plus the few events relayed, nowhere near the 3000 reserved.
    assert prompt_estimate + 3 - refill <= charged <= prompt_estimate + 8


async def test_request_larger_than_the_whole_budget_is_refused_without_retry_after(
    start_limited: Any,
) -> None:
    gateway = await start_limited({"tokens_per_minute": 1000})

    status, headers, body = await call(gateway, max_tokens=5000)

    assert status == 429
    assert "Retry-After" not in headers
    assert "more than team 'team-a' may use per minute" in body["error"]["message"]


async def test_concurrency_limit_frees_a_slot_when_a_stream_ends_or_its_client_leaves(
    start_limited: Any, upstream: RunningUpstream
) -> None:
    gateway = await start_limited({"max_concurrent": 2})
    upstream.state.default = Behavior(delay=0.05)
    long_body = chat_body(stream=True, messages=[{"role": "user", "content": "a " * 200}])
    inflight_key = f"{TEAM_KEYS}:inflight"
    limiter = gateway.server.app[LIMITER]

    async with aiohttp.ClientSession() as session:
        url = f"{gateway.url}/v1/chat/completions"
        first = await session.post(url, json=long_body, headers=auth())
        second = await session.post(url, json=long_body, headers=auth())
        assert (first.status, second.status) == (200, 200)
        assert await limiter.in_flight(inflight_key) == 2

        status, _, body = await call(gateway)
        assert status == 429
        assert "concurrent requests (limit 2 in flight)" in body["error"]["message"]

        first.close()  # a client leaves
        await asyncio.sleep(0.1)
        await settled(gateway)
        assert await limiter.in_flight(inflight_key) == 1
        assert (await call(gateway))[0] == 200  # short, it ends and frees its slot
        second.close()
    await asyncio.sleep(0.1)
    await settled(gateway)
    assert await limiter.in_flight(inflight_key) == 0


async def test_no_slot_leaks_after_1000_aborted_streams(
    start_limited: Any, upstream: RunningUpstream
) -> None:
    gateway = await start_limited({"max_concurrent": 40})
    upstream.state.default = Behavior(delay=0.02)
    body = chat_body(stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}])
    url = f"{gateway.url}/v1/chat/completions"
    statuses: list[int] = []

    async def abort_streams(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            resp = await session.post(url, json=body, headers=auth())
            statuses.append(resp.status)
            if resp.status == 200:
                await resp.content.readuntil(b"\n\n")
            resp.close()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(abort_streams(session, 50) for _ in range(20)))

    deadline = time.monotonic() + 10
    limiter = gateway.server.app[LIMITER]
    while await limiter.in_flight(f"{TEAM_KEYS}:inflight") != 0:
        assert time.monotonic() < deadline, "leases leaked"
        await asyncio.sleep(0.05)
    assert len(statuses) == 1000 and statuses.count(200) == 1000
    assert (await call(gateway))[0] == 200
