"""The upstream stage on its own, against a real fake upstream: it writes the answer and,
through the caller, where the call went; on the way out it closes a stream it holds, which
tells the upstream to stop generating."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.routing import Translation
from gateway.stages.policy import PolicyDecision
from gateway.stages.route import Router
from gateway.stages.translate import translate
from gateway.stages.upstream import CallUpstream
from gateway.teams import Team
from gateway.testing.fake_upstream import Behavior
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.client import JsonAnswer, StreamAnswer, UpstreamClient
from gateway.upstream.health import HealthBook
from gateway.upstream.http1 import Connections
from tests.conftest import MODEL, RunningUpstream, a_request, an_exchange, config_dict, make_config


@pytest.fixture
async def stage(upstream: RunningUpstream) -> AsyncIterator[tuple[CallUpstream, Router]]:
    config = make_config(config_dict(upstream.url))
    health = HealthBook(config.health, {MODEL: ["fake"]})
    connections = Connections()
    caller = UpstreamCaller(
        UpstreamClient(config, connections), health, config.retries, GatewayMetrics()
    )
    yield CallUpstream(caller), Router(config)
    await connections.close()


def decided(router: Router, stream: bool) -> tuple[PolicyDecision, Translation]:
    request = a_request(stream=stream)
    route = router.resolve("team-a", MODEL)
    return PolicyDecision(request, route, None, False, None, ()), translate(route, request)


async def test_a_whole_answer_and_the_upstream_it_came_from(
    stage: tuple[CallUpstream, Router],
) -> None:
    call, router = stage
    policy, translation = decided(router, stream=False)
    exchange = an_exchange(
        team=Team("team-a"), request=policy.request, policy=policy, translation=translation
    )

    await call.enter(exchange)

    assert isinstance(exchange.answer, JsonAnswer)
    assert (exchange.call.upstream, exchange.call.attempts) == ("fake", 1)


async def test_leaving_closes_a_stream_the_client_no_longer_reads(
    stage: tuple[CallUpstream, Router], upstream: RunningUpstream
) -> None:
    call, router = stage
    upstream.state.default = Behavior(delay=0.2)
    policy, translation = decided(router, stream=True)
    exchange = an_exchange(
        team=Team("team-a"), request=policy.request, policy=policy, translation=translation
    )

    await call.enter(exchange)
    assert isinstance(exchange.answer, StreamAnswer)
    call.leave(exchange)

    for _ in range(100):
        if upstream.state.disconnected:
            break
        await asyncio.sleep(0.01)
    assert upstream.state.disconnected
