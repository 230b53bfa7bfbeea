"""Anthropic's answers in OpenAI's shapes: a `message` becomes a `chat.completion`, and a
stream of Anthropic events becomes chat.completion.chunk events, with the usage chunk built
from Anthropic's own counts and Anthropic's error events raised as the gateway's errors.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic_core import from_json, to_json

from gateway.errors import GatewayError, UpstreamUnavailable, from_upstream
from gateway.upstream.sse import DONE_EVENT

# Anthropic's stop reasons in OpenAI's finish_reason vocabulary; unknown ones are "stop".
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# HTTP status of each Anthropic error type, for errors reported inside a stream.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_MAX_UPSTREAM_MESSAGE = 1000
# What reading an answer of the wrong shape raises: the upstream's fault, not the gateway's.
UNREADABLE = (LookupError, TypeError, AttributeError, ValueError)


def completion(body: dict[str, Any], public_model: str) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in body.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = to_json(block.get("input") or {}).decode()
            tool_calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = body.get("usage") or {}
    prompt_tokens = _prompt_tokens(usage)
    completion_tokens = int(usage.get("output_tokens") or 0)
    return {
        "id": body.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or public_model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH_REASONS.get(body.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _prompt_tokens(usage: dict[str, Any]) -> int:
    # Anthropic counts cached prompt tokens apart; OpenAI's prompt_tokens includes them.
    return sum(
        int(usage.get(key) or 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _data_of(event: bytes) -> bytes | None:
    """The payload of an event's `data:` line (Anthropic sends one per event)."""
    if event.startswith(b"data:"):
        start = 5
    else:
        at = event.find(b"\ndata:")
        if at < 0:
            return None
        start = at + 6
    end = event.find(b"\n", start)
    return event[start:end] if end >= 0 else event[start:]


class AnthropicStreamTranslator:
    """Anthropic stream events in, OpenAI chunk events out, for one stream.

    Every chunk shares one prefix (id, created, model), serialized once at message_start;
    each event then costs one small JSON encoding of its delta.
    """

    __slots__ = (
        "_args_sent",
        "_base",
        "_completion_tokens",
        "_head",
        "_include_usage",
        "_prompt_tokens",
        "_tool_index",
        "_tool_indexes",
    )

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._prompt_tokens = 0
        self._completion_tokens = 0
        # Anthropic block index -> OpenAI tool_calls index, for tool_use blocks.
        self._tool_indexes: dict[int, int] = {}
        self._tool_index = -1
        self._args_sent = False
        self._start({})

    def _start(self, message: dict[str, Any]) -> None:
        self._base = (
            b'data: {"id":'
            + to_json(message.get("id") or "")
            + b',"object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + to_json(message.get("model") or "")
            + b',"choices":'
        )
        self._head = self._base + b'[{"index":0,"delta":'

    def _chunk(self, delta: dict[str, Any]) -> bytes:
        return self._head + to_json(delta) + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def feed(self, event: bytes) -> list[bytes]:
        try:
            return self._translate(event)
        except UNREADABLE:
            raise UpstreamUnavailable(
                "The upstream sent a stream event the gateway cannot read."
            ) from None

    def _translate(self, event: bytes) -> list[bytes]:
        data = _data_of(event)
        if data is None:
            return []
        payload = from_json(data)
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload["delta"]
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta["text"]})] if delta["text"] else []
            if delta.get("type") == "input_json_delta" and delta["partial_json"]:
                self._args_sent = True
                return [self._arguments(payload["index"], delta["partial_json"])]
            return []  # thinking and signature deltas: the gateway never asks for them
        if kind == "content_block_start":
            return self._block_start(payload["index"], payload["content_block"])
        if kind == "content_block_stop":
            if payload["index"] in self._tool_indexes and not self._args_sent:
                # A call without input streams no JSON; the client still needs an object.
                return [self._arguments(payload["index"], "{}")]
            return []
        if kind == "message_start":
            message = payload["message"]
            self._start(message)
            self._prompt_tokens = _prompt_tokens(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            usage = payload.get("usage") or {}
            self._completion_tokens = int(usage.get("output_tokens") or 0)
            if usage.get("input_tokens") is not None:
                self._prompt_tokens = _prompt_tokens(usage)
            reason = _FINISH_REASONS.get(payload["delta"].get("stop_reason") or "", "stop")
            return [
                self._head + b'{},"logprobs":null,"finish_reason":' + to_json(reason) + b"}]}\n\n"
            ]
        if kind == "message_stop":
            return [self._usage_chunk(), DONE_EVENT] if self._include_usage else [DONE_EVENT]
        if kind == "error":
            raise _stream_error(payload.get("error") or {})
        return []  # ping, and event types Anthropic may add later

    def _block_start(self, index: int, block: dict[str, Any]) -> list[bytes]:
        if block.get("type") == "text":
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if block.get("type") != "tool_use":
            return []
        self._tool_index += 1
        self._tool_indexes[index] = self._tool_index
        self._args_sent = False
        call = {
            "index": self._tool_index,
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _arguments(self, block_index: int, fragment: str) -> bytes:
        call = {"index": self._tool_indexes[block_index], "function": {"arguments": fragment}}
        return self._chunk({"tool_calls": [call]})

    def _usage_chunk(self) -> bytes:
        usage = {
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": self._completion_tokens,
            "total_tokens": self._prompt_tokens + self._completion_tokens,
        }
        return self._base + b'[],"usage":' + to_json(usage) + b"}\n\n"


def _stream_error(error: dict[str, Any]) -> GatewayError:
    status = _ERROR_STATUS.get(str(error.get("type")), 500)
    message = error.get("message")
    return from_upstream(status, str(message)[:_MAX_UPSTREAM_MESSAGE] if message else None)
