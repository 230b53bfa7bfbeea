"""Row 2: an upstream that accepts the request and never sends the response headers.

Best in class: one per-try timeout (`timeouts.first_byte`), then a retry on another
upstream or a 504, within a bounded total (`retries.deadline_s`); the hung connection is
released (the upstream sees the client leave), and nothing is left running."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    StartProxy,
    auth,
    chat_body,
    config_dict,
    tasks_in_gateway_code,
    wait_for,
)

PER_TRY = 0.3  # first_byte and idle of every upstream here
SLACK = 0.6  # a shared two-core machine: "about X s" is asserted as "before X + SLACK"
# The first upstream is drawn first with a probability of 1 - 1e-6.
FIRST_CHOICE = 1_000_000


def config(*urls: str, **sections: Any) -> dict[str, Any]:
    """MODEL served by `up-0`, `up-1`, ... at `urls` (the first drawn first)."""
    raw = config_dict(urls[0])
    timeouts = {"connect": 1, "first_byte": PER_TRY, "idle": PER_TRY, "total": 30}
    raw["models"][MODEL]["upstreams"] = []
    for i, url in enumerate(urls):
        raw["upstreams"][f"up-{i}"] = {
            **raw["upstreams"]["fake"],
            "base_url": f"{url}/v1",
            "timeouts": timeouts,
        }
        raw["models"][MODEL]["upstreams"].append(
            {
                "upstream": f"up-{i}",
                "model": UPSTREAM_MODEL,
                "weight": FIRST_CHOICE if i == 0 else 1,
            }
        )
    raw.update(sections)
    return raw


async def chat(gateway: RunningGateway, request_id: str, stream: bool) -> tuple[int, Any, float]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(stream=stream),
            headers={**auth(), "x-request-id": request_id},
        ) as resp,
    ):
        body = await resp.read()
    return resp.status, body, time.monotonic() - started


async def outstanding(gateway: RunningGateway) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        upstreams = (await resp.json())["upstreams"]
    return {name: state["outstanding"] for name, state in upstreams.items()}


async def assert_nothing_left(gateway: RunningGateway) -> None:
    """No stage, background task or upstream handler still running; no request counted as
    outstanding at any upstream."""
    await wait_for(lambda: not tasks_in_gateway_code(), 2.0)
    assert set((await outstanding(gateway)).values()) == {0}


@pytest.mark.parametrize("stream", [False, True])
async def test_row_02_hung_upstream_costs_one_per_try_timeout_then_another_answers(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    stream: bool,
) -> None:
    gateway = await start_gateway(config(upstream.url, spare_upstream.url))
    upstream.state.default = Behavior(hang=True)

    status, body, elapsed = await chat(gateway, "hung-1", stream)

    assert status == 200 and b"echo:" in body
    assert not stream or body.endswith(b"data: [DONE]\n\n")
    assert PER_TRY <= elapsed < PER_TRY + SLACK
    assert (len(upstream.state.requests), len(spare_upstream.state.requests)) == (1, 1)
    # The gateway hung up on the stuck upstream (its handler saw the client leave).
    await wait_for(lambda: upstream.state.disconnected == ["hung-1"], 1.0)
    await assert_nothing_left(gateway)


async def test_row_02_only_upstream_hung_is_a_504_after_one_per_try_timeout(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(config(upstream.url))
    upstream.state.default = Behavior(hang=True)

    status, body, elapsed = await chat(gateway, "hung-2", stream=False)

    assert status == 504
    assert b'"code":"upstream_timeout"' in body
    assert PER_TRY <= elapsed < PER_TRY + SLACK
    assert len(upstream.state.requests) == 1  # the same hung upstream is not tried twice
    await wait_for(lambda: upstream.state.disconnected == ["hung-2"], 1.0)
    await assert_nothing_left(gateway)


async def test_row_02_every_upstream_hung_is_a_504_at_the_call_deadline(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    """Two hung upstreams, a 0.45 s deadline: the first try waits its 0.3 s, the retry
    only what is left (0.15 s), not another 0.3 s."""
    gateway = await start_gateway(
        config(upstream.url, spare_upstream.url, retries={"deadline_s": 0.45})
    )
    upstream.state.default = spare_upstream.state.default = Behavior(hang=True)

    status, body, elapsed = await chat(gateway, "hung-3", stream=True)

    assert status == 504
    assert b'"code":"upstream_timeout"' in body
    assert 0.45 <= elapsed < 0.45 + SLACK
    await wait_for(
        lambda: (
            (upstream.state.disconnected, spare_upstream.state.disconnected)
            == (["hung-3"], ["hung-3"])
        ),
        1.0,
    )
    await assert_nothing_left(gateway)


async def test_row_02_blackholed_network_is_a_504_and_the_connection_is_closed(
    start_gateway: StartGateway, upstream: RunningUpstream, start_proxy: StartProxy
) -> None:
    """A network that accepts the connection and swallows every byte (fault proxy
    blackhole): the same per-try timeout, and the gateway closes its connection."""
    proxy = await start_proxy(upstream.server.port or 0)
    gateway = await start_gateway(config(f"http://127.0.0.1:{proxy.port}"))
    proxy.blackhole()

    status, body, elapsed = await chat(gateway, "hung-4", stream=False)

    assert status == 504
    assert b'"code":"upstream_timeout"' in body
    assert PER_TRY <= elapsed < PER_TRY + SLACK
    assert proxy.accepted == 1
    await wait_for(lambda: proxy.open == 0, 1.0)  # the gateway hung up
    assert upstream.state.requests == []
    await assert_nothing_left(gateway)
    proxy.heal()
    status, _, _ = await chat(gateway, "after-heal", stream=False)
    assert status == 200
