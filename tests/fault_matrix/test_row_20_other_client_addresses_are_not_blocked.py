"""Row 20: failures are counted per client address: one address blocked leaves another
(127.0.0.2, the same machine) with its own count, its valid key served and its wrong key
answered 401."""

from __future__ import annotations

from tests.conftest import RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import (
    OTHER_SOURCE,
    THRESHOLD,
    guarded_config,
    send,
    valid,
)


async def test_row_20_a_blocked_address_leaves_other_addresses_alone(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url))

    blocked = await send(gateway.url, THRESHOLD + 1, source=OTHER_SOURCE)
    served = await valid(gateway.url)
    mistyped = await send(gateway.url, THRESHOLD)
    still_blocked = await valid(gateway.url, source=OTHER_SOURCE)

    assert blocked[-1].status == 429
    assert served.status == 200
    assert [reply.status for reply in mistyped] == [401] * THRESHOLD
    assert still_blocked.status == 429
    clients = {r["client_address"] for r in gateway.log_records("audit") if r["auth_failure"]}
    assert clients == {"127.0.0.1", OTHER_SOURCE}
