"""Server-Sent Events framing for upstream streams.

Splits an upstream byte stream into whole events without decoding or re-serializing them:
the relay forwards each event's bytes as they are, the moment the event is complete.
One event is bounded in size, so an upstream that never ends a line cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from pydantic_core import to_json

DONE_EVENT = b"data: [DONE]\n\n"


class EventTooLarge(Exception):
    """An upstream event exceeded the configured size bound."""


async def iter_events(chunks: AsyncIterable[bytes], max_event_bytes: int) -> AsyncIterator[bytes]:
    """Complete SSE events (each ending in a blank line, normalized to LF) from raw chunks."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            # A whole event that came in one read is bounded too, not only one still open.
            if end - start >= max_event_bytes:
                raise EventTooLarge
            yield buffer[start : end + 2]
            start = end + 2
        buffer = buffer[start:]
        if len(buffer) > max_event_bytes:
            raise EventTooLarge
    if buffer.strip():
        # A last event without its blank line: the stream was cut, but the event is whole
        # enough to pass on; the caller decides what the missing end means.
        yield buffer + b"\n\n"


def is_done(event: bytes) -> bool:
    return event.startswith((b"data: [DONE]", b"data:[DONE]"))


def error_event(message: str, code: str, error_type: str = "upstream_error") -> bytes:
    """An OpenAI-shaped error as an SSE event, for a stream that cannot end normally."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + to_json(body) + b"\n\n"
