"""Fault matrix row 4, the upstream drops the connection mid-stream: bytes already reached
the client, so there is no retry; the client sees the events that came and then an error
event, never a `[DONE]`; the audit line marks the stream incomplete (`upstream_cut`), and
so does `llm_gateway_stream_endings_total`."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import MODEL, RunningGateway, RunningUpstream, auth, chat_body, metric


async def test_row_04_a_stream_the_upstream_drops_ends_visibly_and_is_audited_incomplete(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(abort_after=3)
    message = [{"role": "user", "content": "one two three four five"}]

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(stream=True, messages=message),
            headers=auth(),
        ) as resp,
    ):
        events = [block for block in (await resp.read()).split(b"\n\n") if block]

    assert resp.status == 200
    contents = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == ["", "echo:", " one", " two"]  # the role event and three words
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert (error["code"], error["message"]) == (
        "upstream_error",
        "The upstream connection broke mid-stream.",
    )
    assert len(upstream.state.requests) == 1  # never retried
    for _ in range(100):
        if gateway.log_records("audit"):
            break
        await asyncio.sleep(0.02)
    [audit] = gateway.log_records("audit")
    assert (audit["status"], audit["outcome"], audit["attempts"]) == (200, "upstream_cut", 1)
    endings = "llm_gateway_stream_endings_total"
    assert await metric(gateway, endings, model=MODEL, outcome="upstream_cut") == 1
    assert await metric(gateway, endings, outcome="ok") == 0
