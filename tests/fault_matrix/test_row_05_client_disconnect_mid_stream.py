"""Row 5: the client disconnects in the middle of a stream.

Best in class: the upstream call is cancelled at once (no more tokens spent for nobody),
the rate-limit lease and concurrency slot are given back, gauges return to 0, the request
is audited `client_aborted` (499), and nothing is left running or destroyed pending."""

from __future__ import annotations

import time

import aiohttp
import pytest

from gateway.appkeys import HEALTH, LIMITER, RETRY_BUDGET
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    asyncio_complaints,
    auth,
    chat_body,
    config_dict,
    metric,
    post_chat,
    tasks_in_gateway_code,
    wait_for,
)

INFLIGHT_KEY = "llmgw:{team-a}:inflight"
STREAMS = 6
# How soon the upstream must see the client's departure. The gateway is told at once (a
# closed socket); the bound is generous for a shared two-core machine.
CANCEL_BOUND_S = 0.5


async def leave_after(gateway: RunningGateway, request_id: str, events: int) -> None:
    """Starts a stream, reads `events` events, then closes the connection."""
    body = chat_body(stream=True, messages=[{"role": "user", "content": "a b c d e f g h i j"}])
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={**auth(), "x-request-id": request_id},
        )
        assert resp.status == 200, await resp.read()
        for _ in range(events):
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: {")
        resp.close()


@pytest.mark.parametrize("limiter", ["memory", "redis"])
async def test_row_05_client_leaving_mid_stream_cancels_upstream_and_releases_everything(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    limiter: str,
) -> None:
    raw = config_dict(upstream.url)
    # One stream at a time: a slot not given back refuses the next stream with 429.
    raw["teams"]["team-a"]["limits"] = {"max_concurrent": 1}
    if limiter == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_server")
        raw["rate_limits"] = {"redis_url": redis.url, "redis_timeout_ms": 500}
    gateway = await start_gateway(raw)
    app = gateway.server.app
    upstream.state.default = Behavior(delay=0.05)  # 14 events: 0.7 s for a whole stream

    noticed = []
    for i in range(STREAMS):
        request_id = f"leaver-{i}"
        await leave_after(gateway, request_id, events=1 + i % 4)
        started = time.monotonic()
        await wait_for(lambda: request_id in upstream.state.disconnected, 2.0)  # noqa: B023
        noticed.append(time.monotonic() - started)

    assert max(noticed) < CANCEL_BOUND_S, noticed
    assert upstream.state.disconnected == [f"leaver-{i}" for i in range(STREAMS)]
    assert upstream.state.completed_streams == 0
    await wait_for(lambda: len(gateway.log_records("audit")) == STREAMS)
    audits = gateway.log_records("audit")
    assert [(a["status"], a["outcome"]) for a in audits] == [(499, "client_aborted")] * STREAMS
    assert await metric(gateway, "llm_gateway_requests_total", code="499") == STREAMS
    assert gateway.log_records("internal_error") == []

    # Everything held is back: the gauge, the concurrency lease, the upstream's
    # outstanding count and the retry budget's active calls; nothing left running.
    assert await metric(gateway, "llm_gateway_requests_in_flight") == 0
    await wait_for(lambda: not tasks_in_gateway_code(), 2.0)
    assert app[RETRY_BUDGET].active_calls == 0
    assert {name: h.outstanding for name, h in app[HEALTH].state.items()} == {
        "fake": 0,
        "fake-openai": 0,
    }
    assert await app[LIMITER].in_flight(INFLIGHT_KEY) == 0
    assert (await post_chat(gateway, chat_body())).status == 200  # the one slot is free
    assert asyncio_complaints(caplog) == []
