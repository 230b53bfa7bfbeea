"""Fault matrix row 8, streams: an upstream event that is not a chat.completion.chunk
(invalid UTF-8, not JSON, JSON of another shape, larger than `server.max_event_bytes`) is
never relayed. Once the stream has started it ends with the gateway's error event and no
`[DONE]`, the audit says `upstream_bad_event`, and the upstream request is closed (the
fake upstream, which would have gone on streaming, sees the gateway hang up); before the
first event it is a 503."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import pytest

from gateway.testing.fake_upstream import BAD_EVENTS, Behavior
from tests.conftest import (
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    post_chat,
)

MESSAGE = [{"role": "user", "content": "one two three four five six"}]
# The fake's events are 50 ms apart: it is still streaming when the gateway hangs up.
SPACED = 0.05


async def eventually(condition: Callable[[], object], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)


async def stream(gateway: RunningGateway, request_id: str) -> tuple[int, list[bytes]]:
    headers = {**auth(), "x-request-id": request_id}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(stream=True, messages=MESSAGE),
            headers=headers,
        ) as resp,
    ):
        raw = await resp.read()
    return resp.status, [block + b"\n\n" for block in raw.split(b"\n\n") if block]


@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
async def test_row_08_a_bad_event_mid_stream_ends_it_with_an_error_event_and_closes_the_upstream(
    gateway: RunningGateway, upstream: RunningUpstream, kind: str
) -> None:
    upstream.state.default = Behavior(bad_event=kind, error_after=2, delay=SPACED)

    status, events = await stream(gateway, f"bad-{kind}")

    assert status == 200
    contents = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == ["", "echo:", " one"]  # the role event and two words, then nothing
    assert BAD_EVENTS[kind] not in b"".join(events)
    assert b"data: [DONE]" not in b"".join(events)
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error"
    assert "chat.completion.chunk" in error["message"]
    await eventually(lambda: upstream.state.disconnected)
    assert upstream.state.disconnected == [f"bad-{kind}"]
    assert upstream.state.completed_streams == 0
    await eventually(lambda: gateway.log_records("audit"))
    [audit] = gateway.log_records("audit")
    assert (audit["status"], audit["outcome"]) == (200, "upstream_bad_event")


async def test_row_08_an_event_over_the_size_bound_is_a_bad_event_too(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(config_dict(upstream.url, max_event_bytes=1024))
    upstream.state.default = Behavior(delay=SPACED)
    message = [{"role": "user", "content": "short " + "x" * 4096}]

    resp = await post_chat(gateway, chat_body(stream=True, messages=message))
    raw = resp.body

    assert resp.status == 200
    assert b"x" * 1024 not in raw and b"data: [DONE]" not in raw
    assert raw.endswith(b'"code":"upstream_error"}}\n\n')
    await eventually(lambda: gateway.log_records("audit"))
    [audit] = gateway.log_records("audit")
    assert audit["outcome"] == "upstream_bad_event"


@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
async def test_row_08_a_bad_first_event_is_a_503_and_nothing_is_streamed(
    gateway: RunningGateway, upstream: RunningUpstream, kind: str
) -> None:
    upstream.state.default = Behavior(bad_event=kind)

    reply = await post_chat(gateway, chat_body(stream=True))

    assert reply.status == 503
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "chat.completion.chunk" in error["message"]
    assert len(upstream.state.requests) == 1  # an upstream's garbage is not retried
