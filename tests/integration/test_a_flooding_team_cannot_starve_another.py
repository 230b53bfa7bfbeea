"""Model capacity is shared by team, not by who sends most: with a model's two upstreams
at `max_in_flight: 2` each, team A keeping 40 requests in flight cannot make team B's
requests wait more than one service time (B is first in line for the next slot freed),
and A still gets all the capacity B does not use (gateway/upstream/capacity.py)."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import RunningUpstream, StartGateway
from tests.integration.capacity import capacity_config, client_session, flood, post, queue_waits_ms

SERVICE_S = 0.1
SLOTS = 2 * 2


async def test_a_team_sending_one_at_a_time_waits_less_than_one_service_time(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    # Service times vary (+-50%), as a model's do: in lockstep, every slot would free at
    # once and the next free slot would be a whole service time away, whoever is first.
    config = capacity_config(upstream, spare_upstream, 2, SERVICE_S, SERVICE_S / 2)
    gateway = await start_gateway(config)
    stop = asyncio.Event()
    a_done: list[float] = []
    async with client_session() as session:
        flooding = asyncio.create_task(flood(session, gateway, "team-a", 40, stop, a_done))
        await asyncio.sleep(5 * SERVICE_S)  # A's line is long before B's first request
        started = time.monotonic()
        b_statuses = [(await post(session, gateway, "team-b"))[0] for _ in range(50)]
        elapsed = time.monotonic() - started
        a_during = sum(1 for at in a_done if started <= at <= started + elapsed)
        stop.set()
        await flooding

    assert b_statuses == [200] * 50
    waits = sorted(queue_waits_ms(gateway, "team-b"))
    assert len(waits) == 50
    assert waits[int(0.99 * len(waits)) - 1] < SERVICE_S * 1000, waits[-5:]
    # The capacity never went past its bound, and A used what B left: every slot busy.
    assert upstream.state.peak_in_flight <= 2 and spare_upstream.state.peak_in_flight <= 2
    possible = elapsed / SERVICE_S * SLOTS
    assert a_during + 50 >= 0.85 * possible, (a_during, possible)
    # A did wait in line: the queue was really in use.
    assert max(queue_waits_ms(gateway, "team-a")) > SERVICE_S * 1000
