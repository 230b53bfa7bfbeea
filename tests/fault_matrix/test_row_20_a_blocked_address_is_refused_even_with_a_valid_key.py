"""Row 20: while a client address is blocked, its requests are refused before their key is
looked at: a valid key gets the same 429 as a wrong one (else the one guess that hits would
stand out), on every endpoint that authenticates, and nothing reaches an upstream."""

from __future__ import annotations

import aiohttp

from tests.conftest import TEAM_KEY, RunningUpstream, StartGateway, auth
from tests.fault_matrix.brute_force import THRESHOLD, guarded_config, send, valid


async def test_row_20_a_valid_key_from_a_blocked_address_gets_the_same_429(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url))
    assert (await valid(gateway.url)).status == 200
    await send(gateway.url, THRESHOLD + 1)
    calls_before = len(upstream.state.requests)

    wrong = (await send(gateway.url))[0]
    right = await valid(gateway.url)
    async with (
        aiohttp.ClientSession(headers=auth(TEAM_KEY)) as session,
        session.get(f"{gateway.url}/v1/models") as models,
    ):
        listed = models.status, await models.json()

    assert (right.status, wrong.status) == (429, 429)
    assert right.json()["error"] == wrong.json()["error"]
    assert listed == (429, wrong.json())
    assert len(upstream.state.requests) == calls_before
    audited = [record["auth_failure"] for record in gateway.log_records("audit")]
    assert audited[-3:] == ["blocked", "blocked", "blocked"]
