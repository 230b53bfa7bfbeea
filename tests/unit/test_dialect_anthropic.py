"""The anthropic dialect: golden requests, answers and streams (tests/golden/anthropic/), the
parameters it refuses, the errors Anthropic reports inside a stream, and the dialect against
the fake upstream's Anthropic route."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.contract import ChatCompletionRequest
from gateway.dialects import DIALECTS
from gateway.dialects.anthropic import DEFAULT_MAX_TOKENS, AnthropicDialect
from gateway.dialects.base import CONTRACT_PARAMETERS, Fate, refuse_or_drop
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.testing.fake_upstream import Behavior, FakeUpstream

GOLDEN = Path(__file__).parent.parent / "golden" / "anthropic"
DIALECT = AnthropicDialect()
PUBLIC = "claude"
UPSTREAM = "claude-upstream"
USER = [{"role": "user", "content": "hi"}]


def parse(**params: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(
        json.dumps({"model": PUBLIC, "messages": USER, **params})
    )


def build(**params: Any) -> dict[str, Any]:
    return DIALECT.build_body(parse(**params), UPSTREAM, PUBLIC)


def events_of(text: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in text.split(b"\n\n") if event.strip()]


def translate_stream(events: list[bytes], include_usage: bool) -> bytes:
    translator = DIALECT.stream_translator(include_usage)
    return b"".join(out for event in events for out in translator.feed(event))


def without_created(chunks: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', chunks)


def golden(kind: str, pattern: str) -> list[Path]:
    return sorted((GOLDEN / kind).glob(pattern))


# ---------------------------------------------------------------- fates and headers


def test_every_contract_parameter_has_a_fate() -> None:
    assert set(DIALECT.fates) == set(CONTRACT_PARAMETERS)
    assert {name for name, fate in DIALECT.fates.items() if fate is Fate.PASS} == {
        "model",
        "temperature",
        "top_p",
        "top_k",
        "stream",
    }


def test_is_registered_under_its_name() -> None:
    assert isinstance(DIALECTS["anthropic"], AnthropicDialect)
    assert DIALECT.path == "/messages"


def test_authenticates_with_x_api_key_and_pins_the_api_version() -> None:
    assert DIALECT.headers("sk-ant") == {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}
    assert DIALECT.headers(None) == {"anthropic-version": "2023-06-01"}


# ---------------------------------------------------------------- golden cases


@pytest.mark.parametrize("case", golden("requests", "*.json"), ids=lambda path: path.stem)
def test_golden_request_becomes_the_exact_upstream_body(case: Path) -> None:
    golden_case = json.loads(case.read_text())
    request = ChatCompletionRequest.model_validate_json(json.dumps(golden_case["request"]))

    assert DIALECT.build_body(request, UPSTREAM, PUBLIC) == golden_case["upstream"]


@pytest.mark.parametrize("case", golden("refusals", "*.json"), ids=lambda path: path.stem)
def test_golden_refusal_names_the_parameter(case: Path) -> None:
    golden_case = json.loads(case.read_text())
    request = ChatCompletionRequest.model_validate_json(json.dumps(golden_case["request"]))

    with pytest.raises(InvalidRequest) as refused:
        DIALECT.build_body(request, UPSTREAM, PUBLIC)

    error = refused.value
    assert {"param": error.param, "code": error.code, "message": error.message} == golden_case[
        "refused"
    ]


@pytest.mark.parametrize("case", golden("responses", "*.json"), ids=lambda path: path.stem)
def test_golden_anthropic_message_becomes_the_exact_chat_completion(case: Path) -> None:
    golden_case = json.loads(case.read_text())

    translated = DIALECT.translate_response(golden_case["anthropic"], PUBLIC)

    assert abs(translated.pop("created") - time.time()) < 60
    assert translated == {k: v for k, v in golden_case["openai"].items() if k != "created"}


STREAM_CASES = [
    pytest.param(expected, include_usage, id=expected.name)
    for expected in golden("streams", "*.openai*.sse")
    for include_usage in [expected.name.endswith(".openai-usage.sse")]
]


@pytest.mark.parametrize(("expected", "include_usage"), STREAM_CASES)
def test_golden_anthropic_stream_becomes_the_exact_openai_chunks(
    expected: Path, include_usage: bool
) -> None:
    recorded = expected.parent / (expected.name.split(".")[0] + ".anthropic.sse")

    chunks = translate_stream(events_of(recorded.read_bytes()), include_usage)

    assert without_created(chunks) == expected.read_bytes()


def test_every_golden_folder_holds_cases() -> None:
    assert golden("requests", "*.json")
    assert golden("refusals", "*.json")
    assert golden("responses", "*.json")
    assert STREAM_CASES


def test_a_whole_stream_has_one_id_and_one_created() -> None:
    events = events_of((GOLDEN / "streams" / "tool_use.anthropic.sse").read_bytes())
    chunks = [json.loads(line[6:]) for line in events_of(translate_stream(events, True))[:-1]]

    assert {(chunk["id"], chunk["created"]) for chunk in chunks} == {
        ("msg_014p7gG3wDgGV9EUtLvnow3U", chunks[0]["created"])
    }


# ---------------------------------------------------------------- refusals

UNSUPPORTED_VALUES: dict[str, Any] = {
    "min_p": 0.1,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "seed": 7,
    "logprobs": 2,
    "echo": True,
    "logit_bias": {"50256": -100},
    "response_format": {"type": "json_object"},
    "reasoning_effort": "low",
    "reasoning": {"enabled": True},
}


def unsupported_params() -> frozenset[str]:
    return frozenset(name for name, fate in DIALECT.fates.items() if fate is Fate.UNSUPPORTED)


def test_the_refusal_table_covers_every_unsupported_parameter() -> None:
    assert set(UNSUPPORTED_VALUES) == unsupported_params()


@pytest.mark.parametrize(
    ("param", "value"), UNSUPPORTED_VALUES.items(), ids=list(UNSUPPORTED_VALUES)
)
def test_unsupported_parameter_is_a_400_naming_it_and_the_model(param: str, value: Any) -> None:
    request = parse(**{param: value})

    with pytest.raises(InvalidRequest) as refused:
        refuse_or_drop(request, unsupported_params(), frozenset(), PUBLIC, DIALECT.name)

    assert refused.value.status == 400
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == param
    assert f"'{param}'" in refused.value.message
    assert f"'{PUBLIC}'" in refused.value.message


@pytest.mark.parametrize(
    ("param", "value"), UNSUPPORTED_VALUES.items(), ids=list(UNSUPPORTED_VALUES)
)
def test_droppable_parameter_is_dropped_and_named(param: str, value: Any) -> None:
    request, dropped = refuse_or_drop(
        parse(**{param: value}), unsupported_params(), frozenset({param}), PUBLIC, DIALECT.name
    )

    assert dropped == [param]
    assert DIALECT.build_body(request, UPSTREAM, PUBLIC) == {
        "model": UPSTREAM,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": USER,
    }


@pytest.mark.parametrize(
    ("param", "value"), UNSUPPORTED_VALUES.items(), ids=list(UNSUPPORTED_VALUES)
)
def test_build_body_refuses_an_unsupported_parameter_left_in_the_request(
    param: str, value: Any
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        build(**{param: value})

    assert (refused.value.param, refused.value.code) == (param, "unsupported_parameter")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 2}, "n"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {}}},
                    {"type": "function", "function": {"name": "g", "strict": True}},
                ]
            },
            "tools[1].function.strict",
        ),
    ],
)
def test_translated_parameter_refuses_values_anthropic_cannot_honour(
    params: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        build(**params)

    assert (refused.value.param, refused.value.code) == (param, "unsupported_parameter")
    assert f"'{PUBLIC}'" in refused.value.message


@pytest.mark.parametrize(
    ("part", "kind"),
    [
        ({"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}, "video"),
        ({"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}}, "audio"),
    ],
)
def test_video_and_audio_parts_are_refused_with_their_exact_path(
    part: dict[str, Any], kind: str
) -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, part]},
    ]

    with pytest.raises(InvalidRequest) as refused:
        build(messages=messages)

    assert refused.value.param == "messages[3].content[1]"
    assert refused.value.code == "unsupported_parameter"


@pytest.mark.parametrize("url", ["data:image/svg+xml;base64,PHN2Zz4=", "data:image/png,raw"])
def test_data_url_anthropic_cannot_take_is_refused_with_its_path(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]

    with pytest.raises(InvalidRequest) as refused:
        build(messages=[{"role": "user", "content": content}])

    assert refused.value.param == "messages[0].content[0].image_url.url"
    assert url not in refused.value.message  # never the client's own data


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    def call(call_id: str, arguments: str) -> dict[str, Any]:
        function = {"name": "f", "arguments": arguments}
        return {"id": call_id, "type": "function", "function": function}

    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call("c0", "{}"), call("c1", arguments)]},
    ]

    with pytest.raises(InvalidRequest) as refused:
        build(messages=messages)

    assert refused.value.param == "messages[1].tool_calls[1].function.arguments"


# ---------------------------------------------------------------- tool_choice

TOOLS = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(
    ("params", "tool_choice"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            {"type": "tool", "name": "f"},
        ),
        ({"parallel_tool_calls": True}, None),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            {"tool_choice": "required", "parallel_tool_calls": False},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
    ],
)
def test_tool_choice_and_parallel_calls_take_anthropics_form(
    params: dict[str, Any], tool_choice: dict[str, Any] | None
) -> None:
    assert build(tools=TOOLS, **params).get("tool_choice") == tool_choice


def test_without_tools_no_tool_choice_is_sent() -> None:
    body = build(tool_choice="none", parallel_tool_calls=False)

    assert "tool_choice" not in body
    assert "tools" not in body


# ---------------------------------------------------------------- errors inside a stream


@pytest.mark.parametrize(
    ("error_type", "error_class", "status"),
    [
        ("overloaded_error", UpstreamUnavailable, 503),
        ("api_error", UpstreamUnavailable, 503),
        ("rate_limit_error", RateLimited, 429),
        ("invalid_request_error", InvalidRequest, 400),
        ("authentication_error", UpstreamUnavailable, 503),
        ("permission_error", UpstreamUnavailable, 503),
        ("not_found_error", ModelNotFound, 404),
        ("request_too_large", PayloadTooLarge, 413),
        ("timeout_error", UpstreamTimeout, 504),
        ("an_error_type_from_the_future", UpstreamUnavailable, 503),
    ],
)
def test_an_error_event_raises_the_gateway_error_for_its_type(
    error_type: str, error_class: type[GatewayError], status: int
) -> None:
    translator = DIALECT.stream_translator(True)
    start = events_of((GOLDEN / "streams" / "text.anthropic.sse").read_bytes())[0]
    translator.feed(start)
    error = {"type": "error", "error": {"type": error_type, "message": "Anthropic says no"}}

    with pytest.raises(GatewayError) as raised:
        translator.feed(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")

    assert type(raised.value) is error_class
    assert raised.value.status == status
    if status == 400:
        assert raised.value.message == "Anthropic says no"


@pytest.mark.parametrize(
    "event",
    [
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b'data: {"type": "a_new_event_type"}\n\n',
        b": a comment\n\n",
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"thinking","thinking":""}}\n\n',
    ],
)
def test_events_without_openai_counterpart_produce_nothing(event: bytes) -> None:
    assert DIALECT.stream_translator(False).feed(event) == []


@pytest.mark.parametrize(
    "event",
    [
        b"data: {not json\n\n",
        b'data: {"type": "content_block_delta", "index": 0}\n\n',
        b'data: {"type": "content_block_delta", "index": 9, "delta": '
        b'{"type": "input_json_delta", "partial_json": "{"}}\n\n',
        b"data: [1, 2]\n\n",
    ],
)
def test_an_unreadable_event_is_the_upstreams_fault(event: bytes) -> None:
    with pytest.raises(UpstreamUnavailable):
        DIALECT.stream_translator(False).feed(event)


@pytest.mark.parametrize(
    "body",
    [
        {"content": [{"type": "tool_use", "name": "f"}]},
        {"content": "not blocks"},
        {"content": [], "usage": {"input_tokens": "many"}},
    ],
)
def test_an_unreadable_answer_is_the_upstreams_fault(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable):
        DIALECT.translate_response(body, PUBLIC)


# ---------------------------------------------------------------- against the fake upstream


async def fake_client(state: FakeUpstream) -> TestClient[Any, Any]:
    client = TestClient(TestServer(state.app()))
    await client.start_server()
    return client


async def test_the_fake_answers_the_dialects_body_with_an_anthropic_message() -> None:
    state = FakeUpstream(api_key="k")
    client = await fake_client(state)
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a b c"}]
    try:
        body = DIALECT.build_body(parse(messages=messages, max_tokens=3), UPSTREAM, PUBLIC)
        response = await client.post("/v1/messages", json=body, headers=DIALECT.headers("k"))
        answer = DIALECT.translate_response(await response.json(), PUBLIC)
    finally:
        await client.close()

    assert response.status == 200
    assert answer["choices"][0]["message"]["content"] == "echo: a b"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert state.requests[0].headers["x-api-key"] == "k"
    assert "authorization" not in state.requests[0].headers


async def test_the_fakes_stream_translates_to_openai_chunks() -> None:
    state = FakeUpstream()
    client = await fake_client(state)
    try:
        body = DIALECT.build_body(
            parse(messages=[{"role": "user", "content": "hello there"}], stream=True),
            UPSTREAM,
            PUBLIC,
        )
        response = await client.post("/v1/messages", json=body, headers=DIALECT.headers(None))
        raw = await response.read()
    finally:
        await client.close()

    chunks = [
        json.loads(event[6:]) for event in events_of(translate_stream(events_of(raw), True))[:-1]
    ]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hello there"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert state.completed_streams == 1


async def test_the_fakes_in_stream_error_raises_through_the_translator() -> None:
    state = FakeUpstream(default=Behavior(stream_error=529, error_after=1))
    client = await fake_client(state)
    try:
        body = DIALECT.build_body(parse(stream=True), UPSTREAM, PUBLIC)
        response = await client.post("/v1/messages", json=body, headers=DIALECT.headers(None))
        events = events_of(await response.read())
    finally:
        await client.close()

    with pytest.raises(UpstreamUnavailable):
        translate_stream(events, False)
    assert b"event: error" in events[-1]


@pytest.mark.parametrize(
    ("body", "headers", "status", "error_type"),
    [
        (
            {"model": "m", "max_tokens": 5, "messages": USER},
            {"anthropic-version": "2023-06-01"},
            401,
            "authentication_error",
        ),
        ({"model": "m", "messages": USER}, DIALECT.headers("k"), 400, "invalid_request_error"),
        (
            {"model": "m", "max_tokens": 5, "messages": USER},
            {"x-api-key": "k"},
            400,
            "invalid_request_error",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": USER},
            {**DIALECT.headers("k"), "x-fake-behavior": "status=529"},
            529,
            "overloaded_error",
        ),
    ],
)
async def test_the_fake_refuses_like_anthropic(
    body: dict[str, Any], headers: dict[str, str], status: int, error_type: str
) -> None:
    client = await fake_client(FakeUpstream(api_key="k"))
    try:
        response = await client.post("/v1/messages", json=body, headers=headers)
        error = await response.json()
    finally:
        await client.close()

    assert response.status == status
    assert error["type"] == "error"
    assert error["error"]["type"] == error_type
