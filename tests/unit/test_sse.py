"""SSE framing: whole events, in order, however the bytes are chunked; bounded in size."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.upstream.sse import EventTooLarge, error_event, is_done, iter_events


async def feed(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def collect(*chunks: bytes, limit: int = 1024) -> list[bytes]:
    return [event async for batch in iter_events(feed(*chunks), limit) for event in batch]


async def test_events_split_across_chunks_are_reassembled() -> None:
    got = await collect(b'data: {"a"', b": 1}\n", b"\ndata: [DO", b"NE]\n\n")

    assert got == [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]


async def test_several_events_in_one_chunk_come_out_in_order_as_one_batch() -> None:
    got = await collect(b"data: 1\n\ndata: 2\n\n: keep-alive\n\n")
    batches = [b async for b in iter_events(feed(b"data: 1\n\ndata: 2\n\nda", b"ta: 3\n\n"), 64)]

    assert got == [b"data: 1\n\n", b"data: 2\n\n", b": keep-alive\n\n"]
    assert batches == [[b"data: 1\n\n", b"data: 2\n\n"], [b"data: 3\n\n"]]


async def test_the_events_before_an_oversized_one_are_handed_on_first() -> None:
    batches = iter_events(feed(b"data: 1\n\ndata: " + b"x" * 100 + b"\n\n"), 64)

    assert await anext(batches) == [b"data: 1\n\n"]
    with pytest.raises(EventTooLarge):
        await anext(batches)


async def test_crlf_framing_is_normalized_even_when_split_between_cr_and_lf() -> None:
    got = await collect(b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n")

    assert got == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_an_unterminated_last_event_is_still_delivered() -> None:
    assert await collect(b"data: 1\n\ndata: 2") == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_an_event_larger_than_the_bound_raises() -> None:
    with pytest.raises(EventTooLarge):
        await collect(b"data: " + b"x" * 600, b"y" * 600, limit=1024)


def test_done_is_recognized_with_and_without_space() -> None:
    assert is_done(b"data: [DONE]\n\n") and is_done(b"data:[DONE]\n\n")
    assert not is_done(b'data: {"content": "[DONE]"}\n\n')


def test_error_event_has_openai_error_shape() -> None:
    assert error_event("cut", "upstream_error") == (
        b'data: {"error":{"message":"cut","type":"upstream_error","param":null,'
        b'"code":"upstream_error"}}\n\n'
    )
