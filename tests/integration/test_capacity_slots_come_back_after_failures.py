"""Every way an attempt ends gives its capacity slot back: a failed attempt before its
retry (which takes a slot again, on the other upstream), an error answer, a stream cut by
its upstream. With `max_wait_ms: 0`, a slot lost would make the next request that needs
it an immediate 503 `model_overloaded`."""

from __future__ import annotations

import asyncio

from gateway.testing.fake_upstream import Behavior
from tests.conftest import RunningUpstream, StartGateway
from tests.integration.capacity import capacity_config, client_session, post


async def test_slots_come_back_after_retries_errors_and_cut_streams(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    raw = capacity_config(upstream, spare_upstream, 1, 0.0)
    raw["queue"] = {"max_wait_ms": 0}
    # Both upstreams fail on purpose in every cycle and the balancer picks the one that
    # serves the third attempt at random: five straight failures would eject one (for
    # seconds), leaving the two requests at the end one healthy slot. Ejection is
    # tests/integration/test_upstream_resilience.py's subject, not this file's.
    raw["health"] = {"consecutive_failures": 1000}
    gateway = await start_gateway(raw)
    faults = [
        Behavior(status=503),  # retried on the other upstream
        Behavior(status=400),  # the client's answer, not retried
        Behavior(abort_after=1),  # a stream cut after its first event
        Behavior(reset=True),  # the connection dropped: retried
    ]
    answers = []
    async with client_session() as session:
        for fault in faults * 5:
            upstream.state.script.append(fault)
            spare_upstream.state.script.append(fault)
            streamed = fault.abort_after is not None
            status, headers, _ = await post(session, gateway, "team-a", stream=streamed)
            answers.append((status, headers.get("Retry-After")))
            upstream.state.script.clear()
            spare_upstream.state.script.clear()
        # Both slots free: two requests at once are both served, neither waits.
        both = await asyncio.gather(*(post(session, gateway, "team-a") for _ in range(2)))

    # Each request got its fault's answer (a 503 or a reset on both upstreams, then the
    # third attempt served; the 400 passed on; the cut stream had started), never
    # model_overloaded (which always says Retry-After).
    assert answers == [(200, None), (400, None), (200, None), (200, None)] * 5
    # Attempts: 3 + 1 + 1 + 3 a cycle, then the two at once.
    assert len(upstream.state.requests) + len(spare_upstream.state.requests) == 5 * 8 + 2
    assert [status for status, _, _ in both] == [200, 200]
    assert all(headers.get("Retry-After") is None for _, headers, _ in both)
