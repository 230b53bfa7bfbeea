"""A full connection pool is the gateway's own backpressure, not a failing upstream: a
request that finds every connection to its upstream in use waits at most the upstream's
`pool_timeout` for one, then gets 503 `upstream_busy`; the wait never counts toward
ejection, and each wait is observed in `llm_gateway_upstream_pool_wait_seconds`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    metric,
    post_chat,
)

POOL_TIMEOUT = 0.5
# Each stream holds its connection for about 8 x 0.25 s = 2 s, well past POOL_TIMEOUT.
SLOW = Behavior(delay=0.25)
MESSAGE = [{"role": "user", "content": "a b c d e f"}]
WAITS = "llm_gateway_upstream_pool_wait_seconds_count"


def pooled_upstreams(*servers: RunningUpstream, connections: int) -> dict[str, Any]:
    """MODEL served by `up-0`, `up-1`, ... (one per server), each with `connections`
    connections; every other upstream has as few, as aiohttp once shared them per host."""
    raw = config_dict(servers[0].url)
    base = raw["upstreams"]["fake"]
    for upstream in raw["upstreams"].values():
        upstream["max_connections"] = connections
    targets = []
    for i, server in enumerate(servers):
        raw["upstreams"][f"up-{i}"] = {
            **base,
            "base_url": f"{server.url}/v1",
            "max_connections": connections,
            "pool_timeout": POOL_TIMEOUT,
        }
        targets.append({"upstream": f"up-{i}", "model": UPSTREAM_MODEL})
    raw["models"][MODEL]["upstreams"] = targets
    # One failure would eject an upstream, if a wait were counted as one.
    raw["health"] = {"consecutive_failures": 1, "base_ejection_s": 60}
    return raw


async def chat(gateway: RunningGateway) -> tuple[int, bytes, float]:
    """Status, body and seconds until the whole body was in, for one slow stream."""
    started = time.perf_counter()
    resp = await post_chat(gateway, chat_body(stream=True, messages=MESSAGE))
    body = resp.body
    return resp.status, body, time.perf_counter() - started


async def requests_seen(upstreams: list[RunningUpstream], count: int) -> None:
    deadline = time.monotonic() + 5
    while sum(len(u.state.requests) for u in upstreams) < count:
        assert time.monotonic() < deadline, "the streams never reached the upstreams"
        await asyncio.sleep(0.01)


async def test_requests_beyond_the_pool_get_503_upstream_busy_after_the_wait_and_eject_nothing(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    servers = [upstream, spare_upstream]
    gateway = await start_gateway(pooled_upstreams(*servers, connections=2))
    upstream.state.default = spare_upstream.state.default = SLOW

    holding = [asyncio.create_task(chat(gateway)) for _ in range(4)]
    await requests_seen(servers, 4)  # both pools full: two streams each
    turned_away = await asyncio.gather(*(chat(gateway) for _ in range(4)))
    served = await asyncio.gather(*holding)

    assert [status for status, _, _ in served] == [200] * 4
    assert all(body.endswith(b"data: [DONE]\n\n") for _, body, _ in served)
    for status, body, elapsed in turned_away:
        assert status == 503
        assert b'"code":"upstream_busy"' in body and b"pool is full" in body
        assert elapsed >= POOL_TIMEOUT  # after the wait, not at once
    # Nothing beyond the pools reached the upstreams, and nobody was held responsible.
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (2, 2)
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        health = (await resp.json())["upstreams"]
    for name in ("up-0", "up-1"):
        assert (health[name]["state"], health[name]["consecutive_failures"]) == ("healthy", 0)
    assert await metric(gateway, "llm_gateway_upstream_ejections_total") == 0
    assert await metric(gateway, WAITS, outcome="timed_out") == 4
    assert await metric(gateway, "llm_gateway_requests_total", code="503") == 4


async def test_a_request_that_waits_gets_the_connection_a_stream_gives_back(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = pooled_upstreams(upstream, connections=1)
    raw["upstreams"]["up-0"]["pool_timeout"] = 20  # longer than the first stream
    gateway = await start_gateway(raw)
    upstream.state.default = Behavior(delay=0.1)  # a stream of about 0.8 s

    first = asyncio.create_task(chat(gateway))
    await requests_seen([upstream], 1)
    second = await chat(gateway)

    assert (await first)[0] == 200
    assert second[0] == 200 and second[1].endswith(b"data: [DONE]\n\n")
    assert await metric(gateway, WAITS, upstream="up-0", outcome="acquired") == 1
    assert await metric(gateway, WAITS, outcome="timed_out") == 0
