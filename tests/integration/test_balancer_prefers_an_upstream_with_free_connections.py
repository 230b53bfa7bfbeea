"""When one upstream of a model has every connection of the gateway's pool in use, a
request goes to another upstream of the model that has one free, at once, rather than
waiting for the full one (however the weights lean)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    metric,
    post_chat,
)

# The full upstream is drawn first with a probability of 1 - 1e-6: only the preference
# for a free connection sends the request elsewhere.
FIRST_CHOICE = 1_000_000


async def test_a_full_pool_is_passed_over_for_an_upstream_with_a_free_connection(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    base = raw["upstreams"]["fake"]
    raw["upstreams"]["full"] = {**base, "max_connections": 1, "pool_timeout": 10}
    raw["upstreams"]["free"] = {**base, "base_url": f"{spare_upstream.url}/v1"}
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "full", "model": UPSTREAM_MODEL, "weight": FIRST_CHOICE},
        {"upstream": "free", "model": UPSTREAM_MODEL},
    ]
    gateway = await start_gateway(raw)
    upstream.state.default = Behavior(hang=True)  # holds its one connection

    holding = asyncio.create_task(post_chat(gateway, chat_body(stream=True)))
    while not upstream.state.requests:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    reply = await post_chat(gateway, chat_body())
    elapsed = time.perf_counter() - started
    holding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holding

    assert reply.status == 200
    assert elapsed < 5  # no wait for the full pool (10 s)
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 1)
    assert await metric(gateway, "llm_gateway_upstream_pool_wait_seconds_count") == 0
