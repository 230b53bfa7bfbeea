"""A multi-turn tool loop with the official `openai` SDK that appends the SDK's own message
objects (not dicts) to `messages`, as OpenAI's tool-calling guide does: each next turn is
answered, and the upstream receives the assistant message without the response-only keys
the SDK serializes (`annotations`, `refusal: null`, `parsed`, `parsed_arguments`, the
stream index of a call, vLLM's `tool_calls: []` and nulls).

The fake upstream answers a `tool_choice` naming a function with one call of it (arguments
`{"text": <last user message>}`) and a JSON `response_format` with `{"echo": ...}`.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam
from pydantic import BaseModel

from gateway.testing.fake_upstream import Behavior
from tests.conftest import MODEL, OPENAI_MODEL, RunningUpstream

# One model per upstream dialect the fake serves: together (the contract's own) and openai.
MODELS = pytest.mark.parametrize("model", [MODEL, OPENAI_MODEL])

LOOKUP: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}
FORCE_LOOKUP: Any = {"type": "function", "function": {"name": "lookup"}}
QUESTION = "what is the capital of France"
CALL_ARGUMENTS = json.dumps({"text": QUESTION})
# What the upstream must receive for the assistant's tool call: no response-only key.
SENT_CALL = {
    "role": "assistant",
    "tool_calls": [
        {
            "id": "call_fake_0",
            "type": "function",
            "function": {"name": "lookup", "arguments": CALL_ARGUMENTS},
        }
    ],
}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call_fake_0", "content": "Paris"}
# The SDK's own parse() serializes its parsed object with a warning of pydantic's (the
# message's generic type is unbound); the same warning reaches every user of parse().
SDK_PARSED_WARNING = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")


class Lookup(BaseModel):
    text: str


class Echo(BaseModel):
    echo: str


def sent_messages(upstream: RunningUpstream) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = upstream.state.requests[-1].body["messages"]
    return messages


@MODELS
async def test_create_messages_appended_to_the_history_are_accepted(
    model: str, client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    called = await client.chat.completions.create(
        model=model, messages=messages, tools=[LOOKUP], tool_choice=FORCE_LOOKUP
    )
    assert called.choices[0].message.tool_calls, "the fake did not call the tool"
    messages += [called.choices[0].message, TOOL_RESULT]

    answered = await client.chat.completions.create(model=model, messages=messages, tools=[LOOKUP])
    assert sent_messages(upstream)[1] == SENT_CALL
    messages += [answered.choices[0].message, {"role": "user", "content": "and of Spain"}]

    last = await client.chat.completions.create(model=model, messages=messages, tools=[LOOKUP])

    assert last.choices[0].message.content == "echo: and of Spain"
    assert sent_messages(upstream)[3] == {"role": "assistant", "content": f"echo: {QUESTION}"}


@MODELS
async def test_stream_helper_final_messages_appended_to_the_history_are_accepted(
    model: str, client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    async with client.chat.completions.stream(
        model=model, messages=messages, tools=[LOOKUP], tool_choice=FORCE_LOOKUP
    ) as stream:
        called = await stream.get_final_completion()
    assert called.choices[0].message.tool_calls, "the fake did not call the tool"
    messages += [called.choices[0].message, TOOL_RESULT]

    async with client.chat.completions.stream(
        model=model, messages=messages, tools=[LOOKUP]
    ) as stream:
        answered = await stream.get_final_completion()
    assert sent_messages(upstream)[1] == SENT_CALL
    messages += [answered.choices[0].message, {"role": "user", "content": "and of Spain"}]

    async with client.chat.completions.stream(model=model, messages=messages) as stream:
        last = await stream.get_final_completion()

    assert last.choices[0].message.content == "echo: and of Spain"
    assert sent_messages(upstream)[3] == {"role": "assistant", "content": f"echo: {QUESTION}"}


@SDK_PARSED_WARNING
@MODELS
async def test_parse_results_appended_to_the_history_are_accepted(
    model: str, client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    tools = [openai.pydantic_function_tool(Lookup, name="lookup")]
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    called = await client.chat.completions.parse(
        model=model, messages=messages, tools=tools, tool_choice=FORCE_LOOKUP, response_format=Echo
    )
    calls = called.choices[0].message.tool_calls or []
    assert calls and calls[0].function.parsed_arguments == Lookup(text=QUESTION)
    messages += [called.choices[0].message, TOOL_RESULT]

    answered = await client.chat.completions.parse(
        model=model, messages=messages, tools=tools, response_format=Echo
    )
    assert sent_messages(upstream)[1] == SENT_CALL
    assert answered.choices[0].message.parsed == Echo(echo=QUESTION)
    messages += [answered.choices[0].message, {"role": "user", "content": "and of Spain"}]

    last = await client.chat.completions.parse(
        model=model, messages=messages, tools=tools, response_format=Echo
    )

    assert last.choices[0].message.parsed == Echo(echo="and of Spain")
    assert sent_messages(upstream)[3] == {
        "role": "assistant",
        "content": json.dumps({"echo": QUESTION}),
    }


@MODELS
async def test_vllm_shaped_messages_appended_to_the_history_are_accepted(
    model: str, client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    """vLLM's message carries `tool_calls: []` and nulls for what the model did not say."""
    upstream.state.default = Behavior(shape="vllm")
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    answered = await client.chat.completions.create(model=model, messages=messages)
    assert answered.choices[0].message.tool_calls == []
    messages += [answered.choices[0].message, {"role": "user", "content": "and of Spain"}]

    last = await client.chat.completions.create(model=model, messages=messages)

    assert last.choices[0].message.content == "echo: and of Spain"
    assert sent_messages(upstream)[1] == {"role": "assistant", "content": f"echo: {QUESTION}"}
