"""Row 7: a retry storm: every upstream answers 5xx while many clients call at once.

Best in class: retries are capped by the retry budget (retries in flight at most 20% of
the calls in flight, with a floor of 3: Envoy's defaults), so the upstreams see at most
about 1.2x the client load plus that floor, not max_attempts x; and the breaker
(passive-health ejection) opens, taking first attempts off the failing upstream."""

from __future__ import annotations

import asyncio
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

CLIENTS = 40
RETRY_FLOOR = 3  # retries.budget_min, the default
# Each failure takes this long: the whole burst's first attempts are in flight together,
# on a slow machine too, so the budget sees the real load.
FAILURE_DELAY = 0.3


def ceiling(clients: int) -> float:
    return 1.2 * clients + RETRY_FLOOR


async def burst(gateway: RunningGateway) -> list[int]:
    replies = await asyncio.gather(*(post_chat(gateway, chat_body()) for _ in range(CLIENTS)))
    return [reply.status for reply in replies]


def two_upstreams(first: RunningUpstream, second: RunningUpstream, **health: Any) -> Any:
    """MODEL on `fake` and `fake-b`. Default retries (3 attempts, budget 20% / 3) and
    ejection after 5 failures in a row. (`fake` also serves another model alone, so it is
    never ejected: the last upstream of a model stays in service.)"""
    raw = config_dict(first.url)
    raw["upstreams"]["fake-b"] = {**raw["upstreams"]["fake"], "base_url": f"{second.url}/v1"}
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "fake", "model": UPSTREAM_MODEL},
        {"upstream": "fake-b", "model": UPSTREAM_MODEL},
    ]
    raw["health"] = health
    return raw


async def test_row_07_retry_storm_is_capped_by_the_budget_and_the_breaker_opens(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    # A long cool-down, so that the ejection holds for the whole test.
    gateway = await start_gateway(two_upstreams(upstream, spare_upstream, base_ejection_s=60))
    failing = Behavior(status=503, delay=FAILURE_DELAY)
    upstream.state.default = spare_upstream.state.default = failing

    def attempts() -> tuple[int, int]:
        return len(upstream.state.requests), len(spare_upstream.state.requests)

    first = await burst(gateway)
    after_first = attempts()

    assert first == [503] * CLIENTS
    assert CLIENTS + RETRY_FLOOR <= sum(after_first) <= ceiling(CLIENTS), after_first
    over_budget = await metric(gateway, "llm_gateway_upstream_retries_over_budget_total")
    retried = await metric(gateway, "llm_gateway_upstream_retries_total")
    assert retried == sum(after_first) - CLIENTS
    assert over_budget >= CLIENTS - retried  # every other failure was answered, not retried
    # The breaker opened on fake-b: 5 failures in a row ejected it.
    assert await metric(gateway, "llm_gateway_upstream_ejections_total", upstream="fake-b") >= 1
    assert await metric(gateway, "llm_gateway_upstream_healthy", upstream="fake-b") == 0
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        assert (await resp.json())["upstreams"]["fake-b"]["state"] == "ejected"

    second = await burst(gateway)
    to_fake, to_fake_b = (now - before for now, before in zip(attempts(), after_first, strict=True))

    assert second == [503] * CLIENTS
    assert to_fake + to_fake_b <= ceiling(CLIENTS)
    # Every first attempt went to the upstream still in service; the ejected one saw at
    # most the retries the budget let through.
    assert to_fake >= CLIENTS
    assert to_fake_b <= 0.2 * CLIENTS + RETRY_FLOOR


async def test_row_07_one_burst_of_failures_ejects_once_for_the_base_time(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    """One incident is one ejection: the failures of the burst's requests that were
    already on their way when fake-b was ejected say nothing new about it, and must not
    eject it again (the cool-down doubles only when a probe after it fails)."""
    gateway = await start_gateway(two_upstreams(upstream, spare_upstream, base_ejection_s=5))
    upstream.state.default = spare_upstream.state.default = Behavior(
        status=503, delay=FAILURE_DELAY
    )

    assert await burst(gateway) == [503] * CLIENTS

    assert len(spare_upstream.state.requests) > 5  # more failures than one ejection needs
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        health = (await resp.json())["upstreams"]["fake-b"]
    assert health["state"] == "ejected"
    assert await metric(gateway, "llm_gateway_upstream_ejections_total", upstream="fake-b") == 1
    assert health["ejected_for_s"] <= 5
