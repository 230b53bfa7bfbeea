"""The response-only keys of an assistant message sent back in the history (`annotations`,
`parsed`, `parsed_arguments`, a call's `index`, `refusal`/`audio`/`function_call`/
`reasoning_content`/`reasoning` as null, `tool_calls: []`) are removed by the contract's
normalization: no dialect's upstream body and no dump of the request carries them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.contract import AssistantMessage
from gateway.dialects import DIALECTS
from gateway.stages.validate import parse_chat_request

RESPONSE_ONLY = {
    "annotations",
    "parsed",
    "parsed_arguments",
    "index",
    "audio",
    "function_call",
    "reasoning_content",
    "reasoning",
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup", "arguments": '{"q": "x"}', "parsed_arguments": {"q": "x"}},
    "index": 0,
}
NULLS = {"refusal": None, "audio": None, "function_call": None, "reasoning_content": None}
HISTORY = [
    {"role": "user", "content": "look it up"},
    {"role": "assistant", "content": None, "tool_calls": [CALL], "annotations": [], **NULLS},
    {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    {"role": "assistant", "content": '{"a": 1}', "parsed": {"a": 1}, "reasoning": None},
    {"role": "assistant", "content": "and", "tool_calls": [], "annotations": None},
    {"role": "user", "content": "thanks"},
]


def keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from keys(inner)


def request_body() -> bytes:
    return json.dumps({"model": "public", "messages": HISTORY}).encode()


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_no_dialect_sends_a_response_only_key(dialect: str) -> None:
    body = DIALECTS[dialect].build_body(parse_chat_request(request_body()), "upstream", "public")

    assert RESPONSE_ONLY.isdisjoint(keys(body["messages"]))
    assert "tool_calls" not in json.dumps(body["messages"][-2:])


def test_the_normalized_request_holds_none_of_them() -> None:
    request = parse_chat_request(request_body())
    assistants = [m for m in request.messages if isinstance(m, AssistantMessage)]

    assert RESPONSE_ONLY.isdisjoint(keys(request.model_dump()["messages"]))
    assert [m.tool_calls is None for m in assistants] == [False, True, True]
    assert all(m.parsed is None and m.annotations is None for m in assistants)
