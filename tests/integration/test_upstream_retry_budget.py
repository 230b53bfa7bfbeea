"""A retry holds a slot of the gateway's retry budget until it ends, however it ends: a
retry whose client left during its backoff gives its slot back, so abandoned requests
cannot spend the budget for good."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    metric,
    post_chat,
)


async def test_a_retry_abandoned_during_its_backoff_gives_its_budget_slot_back(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    # One retry in flight at a time, whatever the load.
    raw = config_dict(upstream.url)
    raw["retries"] = {"budget_ratio": 0, "budget_min": 1}
    gateway = await start_gateway(raw)
    # The gateway waits the upstream's 1 s Retry-After before retrying; the client leaves
    # after 0.3 s, in the middle of that wait.
    upstream.state.script.append(Behavior(status=429, retry_after="1"))
    with pytest.raises(TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session,
            session.post(
                f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth()
            ) as resp,
        ):
            await resp.read()
    deadline = time.monotonic() + 3
    # Until the gateway has dropped the request.
    while await metric(gateway, "llm_gateway_requests_in_flight") > 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    upstream.state.script.append(Behavior(status=503))
    reply = await post_chat(gateway, chat_body())

    assert reply.status == 200  # the one slot of the budget was free for this retry
    assert len(upstream.state.requests) == 3
