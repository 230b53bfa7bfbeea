"""Server-Sent Events framing for upstream streams.

Splits an upstream byte stream into whole events without decoding or re-serializing them:
the relay forwards each event's bytes as they are, the moment the event is complete. The
events are handed on in batches, those completed by one read of the upstream together, so
that the relay writes what arrived together in one write (one system call instead of one
per event) and still waits for nothing. One event is bounded in size, so an upstream that
never ends a line cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from pydantic_core import to_json

DONE_EVENT = b"data: [DONE]\n\n"


class EventTooLarge(Exception):
    """An upstream event exceeded the configured size bound."""


async def iter_events(
    chunks: AsyncIterable[bytes], max_event_bytes: int
) -> AsyncIterator[list[bytes]]:
    """Complete SSE events (each ending in a blank line, normalized to LF) from raw chunks,
    in order, as the non-empty batch each chunk completed. An event over the bound raises
    EventTooLarge once the events before it have been handed on."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        events: list[bytes] = []
        while (end := buffer.find(b"\n\n", start)) >= 0:
            # A whole event that came in one read is bounded too, not only one still open.
            if end - start >= max_event_bytes:
                if events:
                    yield events
                raise EventTooLarge
            events.append(buffer[start : end + 2])
            start = end + 2
        if events:
            yield events
        buffer = buffer[start:]
        if len(buffer) > max_event_bytes:
            raise EventTooLarge
    if buffer.strip():
        # A last event without its blank line: the stream was cut, but the event is whole
        # enough to pass on; the caller decides what the missing end means.
        yield [buffer + b"\n\n"]


def is_done(event: bytes) -> bool:
    return event.startswith((b"data: [DONE]", b"data:[DONE]"))


def error_event(message: str, code: str, error_type: str = "upstream_error") -> bytes:
    """An OpenAI-shaped error as an SSE event, for a stream that cannot end normally."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + to_json(body) + b"\n\n"
