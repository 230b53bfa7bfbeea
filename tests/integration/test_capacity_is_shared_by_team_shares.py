"""Under saturation, teams with work waiting get the model's capacity in proportion to
their `share`: two teams with shares 3 and 1, both keeping far more requests in flight
than the model serves, complete 3:1 (within 10%) over a 10 s window."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import RunningUpstream, StartGateway
from tests.integration.capacity import capacity_config, client_session, flood

SERVICE_S = 0.05
WINDOW_S = 10.0


async def test_saturating_teams_complete_in_proportion_to_their_shares(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    raw = capacity_config(upstream, spare_upstream, 2, SERVICE_S)
    raw["teams"]["team-a"]["share"] = 3
    raw["teams"]["team-b"]["share"] = 1
    gateway = await start_gateway(raw)
    stop = asyncio.Event()
    done: dict[str, list[float]] = {"team-a": [], "team-b": []}
    async with client_session() as session:
        floods = [
            asyncio.create_task(flood(session, gateway, team, 20, stop, done[team]))
            for team in done
        ]
        await asyncio.sleep(1.0)  # both lines long
        started = time.monotonic()
        await asyncio.sleep(WINDOW_S)
        ended = time.monotonic()
        stop.set()
        await asyncio.gather(*floods)

    a, b = (sum(1 for at in done[team] if started <= at < ended) for team in done)
    assert b > 0
    assert 3 * 0.9 <= a / b <= 3 * 1.1, (a, b)
    # The model was saturated all along: the window used (nearly) all four slots.
    assert a + b >= 0.85 * WINDOW_S / SERVICE_S * 4, (a, b)
