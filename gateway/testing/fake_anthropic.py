"""The fake upstream's Anthropic Messages API: `POST /v1/messages`, answered like Anthropic.

The same echo as the OpenAI route (`EchoAnswer`: "echo:" plus the last user message's
words, one token per word, cut at `max_tokens`), in Anthropic's shapes: a `message`, or its
event stream (message_start, content_block_start, ping, one text_delta per word,
content_block_stop, message_delta, message_stop). It checks what Anthropic checks first
(`x-api-key`, `anthropic-version`, a required `max_tokens`) and answers errors in
Anthropic's `{"type": "error", "error": {...}}` body, so the anthropic dialect meets the
same refusals it would meet in production.

Faults are the shared `Behavior`s; `stream_error=<status>` sends Anthropic's own in-stream
`error` event with the error type of that status (`stream_error=529`: `overloaded_error`),
and `status=529` answers Anthropic's HTTP overload.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.testing.fake_upstream import (
    Behavior,
    EchoAnswer,
    FakeUpstream,
    RecordedRequest,
    text_of,
)

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
# Anthropic's error type for each HTTP status it uses.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


async def anthropic_messages(state: FakeUpstream, request: web.Request) -> web.StreamResponse:
    behavior = state.behavior_for(request)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "There was an error parsing the body of your request.")
    headers = {name.lower(): value for name, value in request.headers.items()}
    state.requests.append(RecordedRequest(headers, body))

    if state.api_key is not None and request.headers.get("x-api-key") != state.api_key:
        return _error(401, "invalid x-api-key")
    if (status := await state.play_fault(behavior, request)) is not None:
        return _error(status, f"fake upstream error {status}", headers=behavior.headers())
    if "anthropic-version" not in headers:
        return _error(400, "anthropic-version: header is required")
    if not isinstance(body.get("messages"), list):
        return _error(400, "messages: Field required")
    if not isinstance(body.get("max_tokens"), int):
        return _error(400, "max_tokens: Field required")

    answer = EchoAnswer.of(body)
    # Anthropic counts the top-level system prompt as input too.
    input_tokens = answer.prompt_tokens + len(text_of(body.get("system")).split())
    if body.get("stream"):
        return await _stream(state, request, answer, input_tokens, behavior)
    return await state.answer_whole(
        request,
        behavior,
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [{"type": "text", "text": " ".join(answer.words)}],
            "stop_reason": _STOP_REASONS[answer.finish_reason],
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": len(answer.words)},
        },
    )


async def _stream(
    state: FakeUpstream,
    request: web.Request,
    answer: EchoAnswer,
    input_tokens: int,
    behavior: Behavior,
) -> web.StreamResponse:
    events = (
        (_event(kind, data), kind == "content_block_delta")
        for kind, data in _events(answer, input_tokens)
    )
    return await state.play_stream(
        request, behavior, events, lambda status: _event("error", _error_body(status))
    )


def _events(answer: EchoAnswer, input_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # Anthropic's message_start already counts one output token; the final count
        # comes with message_delta.
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for position, word in enumerate(answer.words):
        delta = {"type": "text_delta", "text": word if position == 0 else " " + word}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    stop = {"stop_reason": _STOP_REASONS[answer.finish_reason], "stop_sequence": None}
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": stop, "usage": {"output_tokens": len(answer.words)}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(status, "api_error")
    text = message or f"fake upstream {error_type} {status}"
    return {"type": "error", "error": {"type": error_type, "message": text}}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(_error_body(status, message), status=status, headers=headers)
