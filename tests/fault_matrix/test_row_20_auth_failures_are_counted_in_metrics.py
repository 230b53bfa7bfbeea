"""Row 20: every refused authentication is counted in
`llm_gateway_auth_failures_total{reason}` (missing, malformed, unknown_key, blocked) and
every block started in `llm_gateway_auth_blocks_total`, for alerts; no label holds a client
address (that would make the series unbounded: the address is in the audit line)."""

from __future__ import annotations

import aiohttp

from tests.conftest import RunningUpstream, StartGateway, metric
from tests.fault_matrix.brute_force import (
    OTHER_SOURCE,
    THRESHOLD,
    WRONG_KEY,
    guarded_config,
    send,
    valid,
)

FAILURES = "llm_gateway_auth_failures_total"


async def test_row_20_failures_and_blocks_are_counted_by_reason_without_addresses(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url, max_failures=THRESHOLD))

    await valid(gateway.url)
    await send(gateway.url, key=None)
    await send(gateway.url, headers={"Authorization": "Bearer "})
    # THRESHOLD 401s, the failure that blocks (429, still an unknown key), two refused
    # unread while blocked.
    await send(gateway.url, THRESHOLD + 3, source=OTHER_SOURCE)

    assert await metric(gateway, FAILURES, reason="missing") == 1
    assert await metric(gateway, FAILURES, reason="malformed") == 1
    assert await metric(gateway, FAILURES, reason="unknown_key") == THRESHOLD + 1
    assert await metric(gateway, FAILURES, reason="blocked") == 2
    assert await metric(gateway, "llm_gateway_auth_blocks_total") == 1
    assert await metric(gateway, "llm_gateway_auth_limiter_errors_total") == 0
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        exposition = await resp.text()
    assert OTHER_SOURCE not in exposition
    assert "127.0.0.1" not in exposition
    assert WRONG_KEY not in exposition
