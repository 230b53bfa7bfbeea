"""The official `openai` SDK through the gateway to an Anthropic upstream (the fake
upstream's `/v1/messages`): answers, streams, usage, credentials and refusals, as a team's
code sees them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    TEAM_KEY,
    UPSTREAM_KEY,
    RunningUpstream,
    StartGateway,
    config_dict,
    sdk_for,
)

CLAUDE = "claude-test"
CLAUDE_UPSTREAM = "claude-upstream-1"


def anthropic_config(upstream_url: str) -> dict[str, Any]:
    raw = config_dict(upstream_url)
    raw["upstreams"]["fake-anthropic"] = {**raw["upstreams"]["fake"], "dialect": "anthropic"}
    raw["models"][CLAUDE] = {
        "upstreams": [{"upstream": "fake-anthropic", "model": CLAUDE_UPSTREAM}]
    }
    raw["teams"]["team-a"]["models"].append(CLAUDE)
    return raw


@pytest.fixture
async def sdk(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> AsyncIterator[openai.AsyncOpenAI]:
    gateway = await start_gateway(anthropic_config(upstream.url))
    async with sdk_for(gateway) as client:
        yield client


def assert_upstream_saw_only_its_own_key(upstream: RunningUpstream) -> None:
    for recorded in upstream.state.requests:
        assert recorded.headers["x-api-key"] == UPSTREAM_KEY
        assert recorded.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in recorded.headers
        assert all(TEAM_KEY not in value for value in recorded.headers.values())


async def test_completion_is_the_echo_with_anthropics_usage(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    completion = await sdk.chat.completions.create(
        model=CLAUDE,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
    )

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    # Input: "be brief" + "hello there"; output: "echo: hello there".
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 3)
    assert completion.usage.total_tokens == 7
    assert [r.body for r in upstream.state.requests] == [
        {
            "model": CLAUDE_UPSTREAM,
            "max_tokens": 4096,
            "system": "be brief",
            "messages": [{"role": "user", "content": "hello there"}],
        }
    ]
    assert_upstream_saw_only_its_own_key(upstream)


async def test_max_tokens_cuts_the_answer_and_finishes_with_length(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    completion = await sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "one two three"}], max_tokens=2
    )

    assert completion.choices[0].message.content == "echo: one"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2
    assert upstream.state.requests[-1].body["max_tokens"] == 2


async def test_stream_is_openai_chunks_with_the_usage_chunk_last(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    stream = await sdk.chat.completions.create(
        model=CLAUDE,
        messages=[{"role": "user", "content": "hello there general kenobi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there general kenobi"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 5)
    assert chunks[-1].usage.total_tokens == 9
    body = upstream.state.requests[-1].body
    assert body["stream"] is True
    assert "stream_options" not in body
    assert upstream.state.completed_streams == 1
    assert_upstream_saw_only_its_own_key(upstream)


async def test_stream_without_include_usage_has_no_usage_chunk(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    stream = await sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert all(c.usage is None and c.choices for c in chunks)


async def test_unsupported_parameter_is_refused_before_the_upstream(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(
            model=CLAUDE, messages=[{"role": "user", "content": "hi"}], seed=7
        )

    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == "seed"
    assert CLAUDE in refused.value.message
    assert upstream.state.requests == []


async def test_a_droppable_parameter_is_dropped_and_the_response_says_so(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = anthropic_config(upstream.url)
    raw["models"][CLAUDE]["drop_params"] = ["seed", "presence_penalty"]
    gateway = await start_gateway(raw)
    async with sdk_for(gateway) as client:
        raw_response = await client.chat.completions.with_raw_response.create(
            model=CLAUDE, messages=[{"role": "user", "content": "hi"}], seed=7
        )

    assert raw_response.headers["x-gateway-dropped-params"] == "seed"
    assert raw_response.parse().choices[0].message.content == "echo: hi"
    assert "seed" not in upstream.state.requests[-1].body


async def test_overloaded_upstream_is_a_503(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(status=529)

    with pytest.raises(openai.APIStatusError) as failed:
        await sdk.chat.completions.create(
            model=CLAUDE, messages=[{"role": "user", "content": "hi"}]
        )

    assert failed.value.status_code == 503


async def test_an_error_inside_the_stream_reaches_the_client_as_an_error(
    sdk: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(stream_error=529, error_after=1)
    stream = await sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "one two three"}], stream=True
    )

    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
