"""What an upstream's answer must look like before any of it reaches a client: a whole
answer is a chat.completion; a stream is made of chat.completion.chunk events, `[DONE]`,
error events and comments. Anything else (invalid UTF-8, not JSON, JSON of another shape,
an event of several data lines) is the upstream's fault and is never relayed.

An event is checked on the hot path by one call into pydantic-core, which parses it,
checks its UTF-8 and its shape in one pass, in Rust; a good event is then forwarded as the
same bytes, never re-serialized. Only an event that fails that check is looked at again:
an error the upstream reports inside the stream, a comment (a keep-alive), or a bad event.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import SchemaValidator, ValidationError, core_schema, from_json

from gateway.errors import GatewayError, from_upstream

# Upstream error messages are passed on only this far.
MAX_UPSTREAM_MESSAGE = 1000

# A chunk: an object whose `choices` is a list of objects, each with a `delta` object (the
# usage chunk's list is empty). Other keys are not looked at.
_CHUNK = SchemaValidator(
    core_schema.typed_dict_schema(
        {
            "choices": core_schema.typed_dict_field(
                core_schema.list_schema(
                    core_schema.typed_dict_schema(
                        {"delta": core_schema.typed_dict_field(core_schema.dict_schema())},
                        extra_behavior="ignore",
                    )
                )
            )
        },
        extra_behavior="ignore",
    )
)


class BadEvent(Exception):
    """An upstream event that is not a chat.completion.chunk (nor `[DONE]`, an error or a
    comment): invalid UTF-8, not JSON, JSON of another shape, or several data lines."""


def check_event(event: bytes) -> None:
    """Returns for an event that may be relayed as it is: a chunk or a comment (not
    `[DONE]`, which the caller tells apart first). Raises the GatewayError an error event
    reports, or BadEvent."""
    if event.startswith(b"data:"):
        try:
            _CHUNK.validate_json(event[5:])
        except ValidationError:
            pass
        else:
            return
    _check_odd_event(event)


def _check_odd_event(event: bytes) -> None:
    lines = event.rstrip(b"\n").split(b"\n")
    if all(line.startswith(b":") for line in lines):
        # Only comments (keep-alives): no content, and clients ignore them.
        try:
            event.decode()
        except UnicodeDecodeError:
            raise BadEvent from None
        return
    if len(lines) != 1 or not lines[0].startswith(b"data:"):
        raise BadEvent
    try:
        chunk = from_json(lines[0][5:])
    except ValueError:
        raise BadEvent from None
    if isinstance(chunk, dict):
        error = chunk.get("error")
        if isinstance(error, dict | str):
            raise in_stream_error(error)
        if chunk.get("object") == "error":  # older vLLM: the error's fields at the top
            raise in_stream_error(chunk)
    raise BadEvent


def in_stream_error(error: dict[str, Any] | str) -> GatewayError:
    """The gateway's error for an error event (vLLM sends `data: {"error": {..., "code":
    400}}` in a 200 stream): its integer `code` is the upstream's status."""
    if isinstance(error, str):
        return from_upstream(503, error[:MAX_UPSTREAM_MESSAGE])
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 503
    message = error.get("message")
    return from_upstream(
        status, str(message)[:MAX_UPSTREAM_MESSAGE] if message is not None else None
    )


def is_completion(answer: Any) -> bool:
    """A whole answer of the chat.completion shape: an object whose `choices` is a
    non-empty list of objects, each with a `message` object."""
    if not isinstance(answer, dict):
        return False
    choices = answer.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(
            isinstance(choice, dict) and isinstance(choice.get("message"), dict)
            for choice in choices
        )
    )
