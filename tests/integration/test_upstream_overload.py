"""Anthropic's overload (HTTP 529, or an `overloaded_error` event before a stream's first
event) is treated like a 503: retried on the model's other upstream, counted toward that
upstream's ejection, and answered as 503 (the contract has no 529) when every attempt
fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    metric,
    post_chat,
    sdk_for,
)

CLAUDE = "claude-test"

# The overloaded upstream is drawn first with a probability of 1 - 1e-6: the retry, not
# the balancer's luck, is what lets the other one serve.
FIRST_CHOICE = 1_000_000


def two_anthropic_upstreams(
    overloaded: RunningUpstream, healthy: RunningUpstream, **sections: Any
) -> dict[str, Any]:
    raw = config_dict(overloaded.url)
    anthropic = {**raw["upstreams"]["fake"], "dialect": "anthropic"}
    raw["upstreams"]["claude-a"] = {**anthropic, "base_url": f"{overloaded.url}/v1"}
    raw["upstreams"]["claude-b"] = {**anthropic, "base_url": f"{healthy.url}/v1"}
    raw["models"][CLAUDE] = {
        "upstreams": [
            {"upstream": "claude-a", "weight": FIRST_CHOICE},
            {"upstream": "claude-b"},
        ]
    }
    raw["teams"]["team-a"]["models"].append(CLAUDE)
    raw.update(sections)
    return raw


@pytest.fixture
async def gateway(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> RunningGateway:
    return await start_gateway(two_anthropic_upstreams(upstream, spare_upstream))


@pytest.fixture
async def sdk(gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_for(gateway) as client:
        yield client


async def test_http_529_is_retried_on_the_models_other_upstream(
    sdk: openai.AsyncOpenAI,
    gateway: RunningGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
) -> None:
    upstream.state.default = Behavior(status=529)

    completion = await sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hello there"}]
    )

    assert completion.choices[0].message.content == "echo: hello there"
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 1)
    retries = "llm_gateway_upstream_retries_total"
    assert await metric(gateway, retries, upstream="claude-a", reason="unavailable") == 1


async def test_overloaded_error_event_before_the_first_event_is_retried(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    # Anthropic's overload inside a 200 stream, before message_start.
    upstream.state.default = Behavior(stream_error=529)

    stream = await sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    text = "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )

    assert text == "echo: hello there"
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 1)
    assert spare_upstream.state.completed_streams == 1


@pytest.mark.parametrize("behavior", ["status=529", "stream_error=529"])
async def test_overload_of_every_upstream_is_a_503_after_every_attempt(
    gateway: RunningGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    behavior: str,
) -> None:
    upstream.state.default = spare_upstream.state.default = Behavior.parse(behavior)

    reply = await post_chat(gateway, chat_body(model=CLAUDE, stream=True))

    assert reply.status == 503  # never 529: the contract has no such status
    assert reply.json()["error"]["code"] == "upstream_unavailable"
    assert len(upstream.state.requests) + len(spare_upstream.state.requests) == 3


@pytest.mark.parametrize("behavior", ["status=529", "stream_error=529"])
async def test_overload_counts_toward_ejection(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    behavior: str,
) -> None:
    gateway = await start_gateway(
        two_anthropic_upstreams(
            upstream, spare_upstream, health={"consecutive_failures": 2, "base_ejection_s": 60}
        )
    )
    upstream.state.default = Behavior.parse(behavior)

    for _ in range(5):
        assert (await post_chat(gateway, chat_body(model=CLAUDE, stream=True))).status == 200

    assert len(upstream.state.requests) == 2  # two overloads, then no traffic while ejected
    assert len(spare_upstream.state.requests) == 5
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        health = (await resp.json())["upstreams"]
    assert health["claude-a"]["state"] == "ejected"
    ejections = "llm_gateway_upstream_ejections_total"
    assert await metric(gateway, ejections, upstream="claude-a") == 1
