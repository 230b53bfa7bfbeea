"""The check every upstream stream event passes before it is relayed (`upstream.shape`):
chat.completion.chunk events, comments and error events as real servers send them pass
(or are raised as the error they report); anything else is a BadEvent. A whole answer
must be of the chat.completion shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.upstream.shape import BadEvent, check_event, is_completion

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def golden_events() -> list[bytes]:
    events = []
    for path in sorted(GOLDEN.glob("vllm/streams/*.upstream.sse")):
        for block in path.read_bytes().split(b"\n\n"):
            if block.strip() and b'"error"' not in block and b"[DONE]" not in block:
                events.append(block + b"\n\n")
    return events


@pytest.mark.parametrize(
    "event",
    [
        *golden_events(),
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n',
        # The usage chunk, and Azure's first chunk: no choices at all.
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
        b'data: {"choices":[],"prompt_filter_results":[]}\n\n',
        b'data:{"choices":[{"delta":{"content":"caf\xc3\xa9 \\u00e9 \xf0\x9f\x99\x82"}}]}\n\n',
        b": keep-alive\n\n",
    ],
)
def test_chunks_and_comments_pass(event: bytes) -> None:
    check_event(event)


@pytest.mark.parametrize(
    ("event", "status"),
    [
        (
            b'data: {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}\n\n',
            400,
        ),
        # Older vLLM: the error's fields at the top.
        (b'data: {"object": "error", "message": "busy", "code": 503}\n\n', 503),
    ],
)
def test_error_events_raise_the_error_they_report(event: bytes, status: int) -> None:
    with pytest.raises(GatewayError) as raised:
        check_event(event)

    assert raised.value.upstream_status == status


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices":[{"delta":{"content":"\xff\xfe"}}]}\n\n',  # not UTF-8
        b'data: {"choices":[{"delta":{"content":"\\ud800"}}]}\n\n',  # a lone surrogate
        b"data: {this is not JSON\n\n",
        b"data: \n\n",
        b'data: {"unexpected": true}\n\n',
        b'data: {"choices": {}}\n\n',
        b'data: {"choices": [{"index": 0}]}\n\n',
        b'data: {"choices": [{"delta": "text"}]}\n\n',
        b'data: ["choices"]\n\n',
        b'data: {"choices":[]}\ndata: {"choices":[]}\n\n',  # two data lines
        b'event: message\ndata: {"choices":[]}\n\n',
        b"hello\n\n",
        b": keep-alive \xff\n\n",
    ],
)
def test_anything_else_is_a_bad_event(event: bytes) -> None:
    with pytest.raises(BadEvent):
        check_event(event)


def test_a_whole_answer_must_be_a_chat_completion() -> None:
    message = {"role": "assistant", "content": "hi"}
    assert is_completion({"object": "chat.completion", "choices": [{"message": message}]})
    not_completions: list[object] = [
        {"unexpected": True},
        {"choices": []},
        {"choices": [{"text": "hi"}]},
        {"choices": [{"message": "hi"}]},
        ["choices"],
        None,
    ]
    for answer in not_completions:
        assert not is_completion(answer)
