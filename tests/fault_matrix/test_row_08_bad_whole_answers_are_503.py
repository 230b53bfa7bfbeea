"""Fault matrix row 8, whole answers: an upstream answer that is not UTF-8 JSON of the
chat.completion shape is a 503 in the OpenAI error shape, never relayed, and counts against
the upstream's health."""

from __future__ import annotations

import pytest

from gateway.testing.fake_upstream import BAD_EVENTS, Behavior
from tests.conftest import RunningGateway, RunningUpstream, chat_body, metric, post_chat


@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
async def test_row_08_a_whole_answer_that_is_not_a_chat_completion_is_a_503(
    gateway: RunningGateway, upstream: RunningUpstream, kind: str
) -> None:
    upstream.state.default = Behavior(bad_event=kind)

    reply = await post_chat(gateway, chat_body())

    assert reply.status == 503
    body = reply.json()
    assert set(body) == {"error"} and body["error"]["code"] == "upstream_unavailable"
    assert b"echo:" not in reply.body and b"unexpected" not in reply.body
    assert len(upstream.state.requests) == 1
    attempts = "llm_gateway_upstream_attempt_duration_seconds_count"
    assert await metric(gateway, attempts, upstream="fake", outcome="error") == 1
