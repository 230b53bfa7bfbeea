"""The official `openai` SDK against the gateway and a real fake upstream: what a team's
code sees for a completion, a stream, a bad key, an unknown model and a bad parameter."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import MODEL, UPSTREAM_MODEL, RunningGateway, RunningUpstream, sdk_for


async def test_chat_completion_returns_the_upstream_answer_and_usage(
    client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "ping from the sdk"}]
    )

    assert completion.choices[0].message.content == "echo: ping from the sdk"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 5)
    assert upstream.state.requests[-1].body["model"] == UPSTREAM_MODEL


async def test_alias_reaches_the_same_model(
    client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    completion = await client.chat.completions.create(
        model="llama-8b", messages=[{"role": "user", "content": "via alias"}]
    )

    assert completion.choices[0].message.content == "echo: via alias"
    assert upstream.state.requests[-1].body["model"] == UPSTREAM_MODEL


async def test_stream_chunks_reach_the_client_before_the_upstream_finishes(
    client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(delay=0.15)
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[tuple[float, int]] = []
    text = ""
    usage = None
    async for chunk in stream:
        # How many streams the upstream had finished when this chunk reached the client.
        arrivals.append((time.perf_counter() - started, upstream.state.completed_streams))
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage

    assert text == "echo: one two three four five six"
    assert usage is not None and usage.completion_tokens == 7
    first_content_at, finished_by_then = arrivals[1]
    assert finished_by_then == 0, "the first token arrived only after the upstream was done"
    # 10 events 0.15 s apart: the first content must not wait for the rest.
    assert first_content_at < arrivals[-1][0] - 1.0


async def test_unknown_key_raises_authentication_error(gateway: RunningGateway) -> None:
    async with sdk_for(gateway, "gw-wrong") as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


async def test_unknown_model_raises_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def test_bad_parameter_raises_bad_request_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )

    assert caught.value.param == "temperature"
    assert "less than or equal to 1" in caught.value.message


async def test_models_lists_exactly_the_teams_models(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()

    assert sorted(model.id for model in page.data) == sorted([MODEL, "gpt-4o-mini"])


async def test_sdk_extras_are_accepted(
    client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    """What the SDK sends for its own typed parameters works end to end."""
    await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "x"}],
        max_completion_tokens=7,
        logprobs=True,
        top_logprobs=2,
        stop="END",
        user="user-42",
        parallel_tool_calls=False,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}},
        },
    )

    sent = upstream.state.requests[-1].body
    assert sent["max_tokens"] == 7 and "max_completion_tokens" not in sent
    assert sent["logprobs"] == 2 and "top_logprobs" not in sent
    assert sent["stop"] == ["END"]
    assert sent["messages"][0]["role"] == "system"
    assert sent["response_format"] == {"type": "json_schema", "schema": {"type": "object"}}
    assert sent["user"] == "user-42"
    assert sent["parallel_tool_calls"] is False


async def test_concurrent_streams_each_get_their_own_answer(client: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"nonce-{i}"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    answers = await asyncio.gather(*(one(i) for i in range(20)))

    assert answers == [f"echo: nonce-{i}" for i in range(20)]
