"""The parameter contract of `POST /v1/chat/completions` (docs/chat-completions-api.md),
end to end through a real gateway and a real fake upstream.

For every parameter of the seed contract: a value just inside its range (or of the valid
shape) is forwarded upstream in its normalized form, and a value just outside is answered
with a 400 whose `param` is the exact path of the offending field, without quoting the value
back and without calling the upstream. The OpenAI client forms the gateway normalizes
(`max_completion_tokens`, `logprobs: true` + `top_logprobs`, `stream_options`, ...) follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.contract import ChatCompletionRequest
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    chat_body,
    post_chat,
)

# The parameter names of the seed contract, in its order.
SEED_PARAMETERS = (
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "n",
    "seed",
    "stream",
    "logprobs",
    "echo",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "safety_model",
    "compliance",
    "reasoning_effort",
    "reasoning",
    "context_length_exceeded_behavior",
)

CANARY = "CANARY-VALUE"  # submitted text ("canary" in any case) never quoted back in an error
SAME = object()  # forwarded exactly as sent
ABSENT = object()  # omitted from the request body / not forwarded upstream


@dataclass(frozen=True)
class Inside:
    """Accepted: `sent` (merged into a minimal valid body) reaches the upstream with the
    top-level fields `forwarded` (ABSENT: the field is not forwarded)."""

    covers: str
    id: str
    sent: dict[str, Any]
    forwarded: dict[str, Any]


@dataclass(frozen=True)
class Outside:
    """Refused: `sent` is answered with a 400 whose `param` is `param`."""

    covers: str
    id: str
    sent: dict[str, Any]
    param: str
    code: str | None = None


def ok(name: str, value: Any, forwarded: Any = SAME, *, id: str = "", **also: Any) -> Inside:
    sent = {name: value, **also}
    return Inside(
        name, id or f"{name}={value!r}", sent, {name: value if forwarded is SAME else forwarded}
    )


def bad(
    name: str, value: Any, param: str = "", *, id: str = "", code: str | None = None, **also: Any
) -> Outside:
    return Outside(name, id or f"{name}={value!r}", {name: value, **also}, param or name, code)


# ---------------------------------------------------------------- message helpers


def msg(role: str, content: Any = "x", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [msg("user", list(parts))]


def part(kind: str, url: str = "https://example.com/media") -> dict[str, Any]:
    return {"type": kind, kind: {"url": url}}


TEXT = {"type": "text", "text": "what is in it?"}
MEDIA = ("image_url", "video_url", "audio_url")
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup", "arguments": "{}"},
}
TOOL_TURN = [
    msg("user"),
    {"role": "assistant", "tool_calls": [CALL]},
    msg("tool", tool_call_id="call_1"),
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
LOOKUP = {"type": "function", "function": {"name": "lookup"}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}

# An assistant message appended from an earlier answer, with the response-only keys the
# answer or the SDK's object for it carries (see test_multi_turn_sdk.py).
OPENAI_ANSWER_KEYS: dict[str, Any] = {"refusal": None, "annotations": []}
VLLM_ANSWER_KEYS: dict[str, Any] = {
    "refusal": None,
    "annotations": None,
    "audio": None,
    "function_call": None,
    "tool_calls": [],
    "reasoning_content": None,
    "reasoning": None,
}
JSON_TEXT = '{"a": 1}'
PARSED_CALL = {**CALL, "index": 0, "function": {**CALL["function"], "parsed_arguments": {}}}


def answered(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A history whose second message is `message`, an earlier answer of the assistant."""
    return [msg("user"), {"role": "assistant", **message}, msg("user")]


# ---------------------------------------------------------------- the table

INSIDE = [
    ok("model", MODEL, UPSTREAM_MODEL, id="model=public-name"),
    ok("model", "llama-8b", UPSTREAM_MODEL, id="model=alias"),
    ok("messages", [msg("system"), msg("user")], id="messages=system+user"),
    ok(
        "messages",
        [msg("developer"), msg("user")],
        [msg("system"), msg("user")],
        id="messages=developer->system",
    ),
    ok("messages", [msg("user"), msg("assistant")], id="messages=assistant"),
    ok("messages", TOOL_TURN, id="messages=tool-with-tool_call_id"),
    ok(
        "messages",
        answered({"content": "x", **OPENAI_ANSWER_KEYS}),
        answered({"content": "x"}),
        id="messages=assistant-openai-answer-keys-removed",
    ),
    ok(
        "messages",
        answered({"content": "x", **VLLM_ANSWER_KEYS}),
        answered({"content": "x"}),
        id="messages=assistant-vllm-answer-keys-removed",
    ),
    ok(
        "messages",
        answered({"content": JSON_TEXT, "parsed": {"a": 1}}),
        answered({"content": JSON_TEXT}),
        id="messages=assistant-parsed-restating-content-removed",
    ),
    ok(
        "messages",
        answered({"content": None, "tool_calls": [PARSED_CALL], "parsed": None}),
        answered({"tool_calls": [CALL]}),
        id="messages=assistant-call-index-and-parsed_arguments-removed",
    ),
    ok("messages", user(TEXT), id="messages=part-text"),
    *(ok("messages", user(TEXT, part(kind)), id=f"messages=part-{kind}") for kind in MEDIA),
    ok(
        "messages",
        user(part("image_url", "data:image/png;base64,iVBORw0KGgo=")),
        id="messages=data-url",
    ),
    ok("messages", user(part("video_url", "http://example.com/v.mp4")), id="messages=http-url"),
    ok("max_tokens", 1),
    ok("temperature", 0),
    ok("temperature", 1),
    ok("top_p", 0),
    ok("top_p", 1),
    ok("top_k", 1),
    ok("min_p", 0),
    ok("min_p", 1),
    ok("repetition_penalty", 1.0),
    ok("repetition_penalty", 0.01),
    ok("presence_penalty", -2),
    ok("presence_penalty", 2),
    ok("frequency_penalty", -2),
    ok("frequency_penalty", 2),
    ok("stop", "x", ["x"]),
    ok("stop", ["x", "y"]),
    ok("n", 1),
    ok("n", 128),
    ok("seed", 0),
    ok("seed", 42),
    ok("seed", 2**63 - 1, id="seed=int64-max"),
    ok("stream", False),
    ok("stream", True),
    ok("logprobs", 0),
    ok("logprobs", 20),
    ok("echo", True),
    ok("echo", False),
    ok("logit_bias", {"50256": -100}),
    ok("logit_bias", {"50256": 100}),
    ok("response_format", {"type": "text"}),
    ok("response_format", {"type": "json_object"}),
    ok(
        "response_format",
        {"type": "json_schema", "schema": SCHEMA},
        id="response_format=json_schema",
    ),
    ok("response_format", {"type": "regex", "pattern": "[0-9]+"}, id="response_format=regex"),
    ok("tools", TOOLS, id="tools=one-function"),
    ok("tool_choice", "auto", tools=TOOLS),
    ok("tool_choice", "none"),
    ok("tool_choice", "required", tools=TOOLS),
    ok("tool_choice", LOOKUP, tools=TOOLS, id="tool_choice=known-function"),
    ok("safety_model", "meta-llama/Llama-Guard-4-12B"),
    ok("compliance", "hipaa"),
    ok("reasoning_effort", "low"),
    ok("reasoning_effort", "medium"),
    ok("reasoning_effort", "high"),
    ok("reasoning", {"enabled": True}),
    ok("reasoning", {"enabled": False}),
    ok("context_length_exceeded_behavior", "truncate"),
    ok("context_length_exceeded_behavior", "error"),
    # OpenAI client forms, normalized to the contract's.
    ok("max_completion_tokens", 7, ABSENT, id="max_completion_tokens=7->max_tokens"),
    ok("max_completion_tokens", 7, ABSENT, max_tokens=7, id="max_completion_tokens=max_tokens"),
    ok("logprobs", True, 3, top_logprobs=3, id="logprobs=True+top_logprobs=3->3"),
    ok("logprobs", True, 0, id="logprobs=True->0"),
    ok(
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
        {"type": "json_schema", "schema": SCHEMA},
        id="response_format=openai-json_schema",
    ),
    ok("stream_options", {"include_usage": True}, stream=True),
]

OUTSIDE = [
    bad("model", "", id="model=empty"),
    bad("model", 1),
    bad("model", ABSENT, id="model=missing"),
    bad("messages", [], id="messages=empty"),
    bad("messages", ABSENT, id="messages=missing"),
    bad("messages", [msg(CANARY)], "messages[0].role", id="messages=unknown-role"),
    bad("messages", [{"content": "x"}], "messages[0].role", id="messages=no-role"),
    bad("messages", [msg("system", None)], "messages[0].content", id="messages=system-null"),
    bad("messages", [msg("user", [])], "messages[0].content", id="messages=no-parts"),
    bad("messages", [msg("tool")], "messages[0].tool_call_id", id="messages=tool-no-tool_call_id"),
    bad(
        "messages",
        [msg("tool", tool_call_id="")],
        "messages[0].tool_call_id",
        id="messages=tool-empty-tool_call_id",
    ),
    bad(
        "messages",
        user({"type": CANARY}),
        "messages[0].content[0].type",
        id="messages=unknown-part",
    ),
    bad(
        "messages",
        user({"type": "text", "text": 1}),
        "messages[0].content[0].text",
        id="messages=text-not-str",
    ),
    *(
        bad(
            "messages",
            user(TEXT, part(kind, f"ftp://{CANARY}")),
            f"messages[0].content[1].{kind}.url",
            id=f"messages={kind}-bad-url",
        )
        for kind in MEDIA
    ),
    bad(
        "messages",
        user(part("audio_url", CANARY)),
        "messages[0].content[0].audio_url.url",
        id="messages=url-no-scheme",
    ),
    bad("max_tokens", 0),
    bad("max_tokens", 1.5),
    bad("temperature", -0.01),
    bad("temperature", 1.01),
    bad("temperature", "0.5"),
    bad("top_p", -0.01),
    bad("top_p", 1.01),
    bad("top_k", 0),
    bad("top_k", 1.5),
    bad("min_p", -0.01),
    bad("min_p", 1.01),
    bad("repetition_penalty", 0),
    bad("repetition_penalty", CANARY),
    bad("repetition_penalty", float("inf"), id="repetition_penalty=Infinity"),
    bad("temperature", float("nan"), id="temperature=NaN"),
    bad("seed", 2**63, id="seed=2**63"),
    bad("max_tokens", 2**31, id="max_tokens=2**31"),
    bad(
        "messages",
        [msg("user"), {"role": "assistant", "content": None}],
        "messages[1]",
        id="messages=assistant-says-nothing",
    ),
    *(
        bad(
            "messages",
            answered({"content": "x", key: value}),
            f"messages[1].{key}",
            id=f"messages=assistant-{key}-with-a-value",
        )
        for key, value in [
            ("annotations", [{"type": "url_citation", "url_citation": {"url": CANARY}}]),
            ("audio", {"id": CANARY}),
            ("function_call", {"name": "lookup", "arguments": CANARY}),
            ("reasoning_content", CANARY),
            ("reasoning", CANARY),
        ]
    ),
    bad(
        "messages",
        answered({"content": JSON_TEXT, "parsed": {"a": CANARY}}),
        "messages[1].parsed",
        id="messages=assistant-parsed-not-the-content",
    ),
    bad(
        "messages",
        answered({"content": CANARY, "parsed": CANARY}),
        "messages[1].parsed",
        id="messages=assistant-parsed-of-non-json-content",
    ),
    bad(
        "messages",
        answered({"content": None, "tool_calls": [CALL], "parsed": {"a": 1}}),
        "messages[1].parsed",
        id="messages=assistant-parsed-without-content",
    ),
    bad(
        "messages",
        answered(
            {
                "tool_calls": [
                    {**CALL, "function": {**CALL["function"], "parsed_arguments": {"a": CANARY}}}
                ]
            }
        ),
        "messages[1].tool_calls[0].function.parsed_arguments",
        id="messages=assistant-parsed_arguments-not-the-arguments",
    ),
    bad(
        "messages",
        answered({"tool_calls": [{**CALL, "index": 1}]}),
        "messages[1].tool_calls[0].index",
        id="messages=assistant-call-index-not-its-position",
    ),
    bad(
        "messages",
        answered({"content": None, "tool_calls": []}),
        "messages[1]",
        id="messages=assistant-empty-tool_calls-says-nothing",
    ),
    bad("presence_penalty", -2.01),
    bad("presence_penalty", 2.01),
    bad("frequency_penalty", -2.01),
    bad("frequency_penalty", 2.01),
    bad("stop", 1),
    bad("stop", ["x", 1], "stop[1]"),
    bad("n", 0),
    bad("n", 129),
    bad("seed", 1.5),
    bad("seed", "42"),
    bad("stream", 1),
    bad("stream", "true"),
    bad("logprobs", -1),
    bad("logprobs", 21),
    bad("logprobs", CANARY),
    bad("echo", 1),
    bad("logit_bias", {"50256": 100.01}),
    bad("logit_bias", {CANARY: 1}),
    bad("logit_bias", {"canary_token": 1}, id="logit_bias=identifier-key"),
    bad("logit_bias", [1]),
    bad("response_format", {"type": CANARY}, "response_format.type"),
    bad(
        "response_format",
        {"type": "text", "schema": SCHEMA},
        "response_format.schema",
        code="unknown_parameter",
        id="response_format=text+schema",
    ),
    bad(
        "response_format",
        {"type": "json_schema"},
        "response_format.schema",
        id="response_format=json_schema-no-schema",
    ),
    bad(
        "response_format",
        {"type": "regex"},
        "response_format.pattern",
        id="response_format=regex-no-pattern",
    ),
    bad("response_format", {"type": "regex", "pattern": ""}, "response_format.pattern"),
    bad(
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}, "strict": True},
        "response_format.json_schema",
        id="response_format=strict-beside-and-inside-json_schema",
    ),
    bad(
        "response_format",
        {
            "type": "json_schema",
            "json_schema": {"name": "answer", "description": CANARY, "schema": SCHEMA},
        },
        "response_format.description",
        code="unsupported_parameter",
        id="response_format=json_schema-description-on-together",
    ),
    bad("tools", {"type": "function"}, id="tools=not-a-list"),
    bad("tools", [{"type": CANARY, "function": {"name": "f"}}], "tools[0].type"),
    bad(
        "tools",
        [{"type": "function", "function": {"name": f"a {CANARY}"}}],
        "tools[0].function.name",
    ),
    bad(
        "tools",
        [{"type": "function", "function": {"name": "f" * 65}}],
        "tools[0].function.name",
        id="tools=name-65-chars",
    ),
    bad("tool_choice", CANARY),
    bad("tool_choice", "auto", id="tool_choice=auto-without-tools"),
    bad(
        "tool_choice",
        {**LOOKUP, "function": {"name": CANARY}},
        "tool_choice.function.name",
        tools=TOOLS,
        id="tool_choice=unknown-function",
    ),
    bad("safety_model", ""),
    bad("safety_model", 1),
    bad("compliance", CANARY),
    bad("compliance", "HIPAA"),
    bad("reasoning_effort", CANARY),
    bad("reasoning_effort", "minimal"),
    bad("reasoning", {"enabled": 1}, "reasoning.enabled"),
    bad("reasoning", {}, "reasoning.enabled"),
    bad("reasoning", True),
    bad("context_length_exceeded_behavior", CANARY),
    # OpenAI client forms and unknown fields.
    bad("max_completion_tokens", 0),
    bad("max_completion_tokens", 8, max_tokens=7, id="max_completion_tokens=8-vs-max_tokens=7"),
    bad("top_logprobs", 2, id="top_logprobs-without-logprobs"),
    bad("top_logprobs", 2, logprobs=False, id="top_logprobs-with-logprobs=False"),
    bad("top_logprobs", 21, logprobs=True),
    bad("stream_options", {"include_usage": True}, id="stream_options-without-stream"),
    bad("stream_options", {"include_usage": True}, stream=False, id="stream_options-stream=False"),
    bad("frobnicate", 1, code="unknown_parameter", id="unknown-top-level-field"),
    bad(
        "messages",
        [msg("user", frob=1)],
        "messages[0].frob",
        code="unknown_parameter",
        id="messages=unknown-field",
    ),
]


async def post(gateway: RunningGateway, sent: dict[str, Any]) -> tuple[int, str]:
    body = {key: value for key, value in chat_body(**sent).items() if value is not ABSENT}
    reply = await post_chat(gateway, body)
    return reply.status, reply.body.decode()


@pytest.mark.parametrize("case", INSIDE, ids=lambda case: case.id)
async def test_value_inside_the_range_is_forwarded_normalized(
    case: Inside, gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    status, text = await post(gateway, case.sent)

    assert status == 200, text
    if case.sent.get("stream"):
        assert text.rstrip().endswith("data: [DONE]")
    forwarded = upstream.state.requests[-1].body
    assert forwarded["model"] == UPSTREAM_MODEL
    for name, expected in case.forwarded.items():
        assert forwarded.get(name, ABSENT) == expected, name


@pytest.mark.parametrize("case", OUTSIDE, ids=lambda case: case.id)
async def test_value_outside_the_range_is_a_400_naming_the_param(
    case: Outside, gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    status, text = await post(gateway, case.sent)

    assert status == 400, text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (case.param, case.code)
    assert "canary" not in (error["message"] + error["param"]).lower()
    assert upstream.state.requests == []


def test_every_seed_parameter_has_a_value_inside_and_outside() -> None:
    fields = set(ChatCompletionRequest.model_fields)
    assert [name for name in SEED_PARAMETERS if name not in fields] == []
    for table in (INSIDE, OUTSIDE):
        covered = {case.covers for case in table}
        assert [name for name in SEED_PARAMETERS if name not in covered] == []
