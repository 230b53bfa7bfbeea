"""Row 20: the client address is the connection's peer. `X-Forwarded-For` is believed only
when the peer is one of `auth_failures.trusted_proxies`, and then read from the right: the
client is the rightmost address that is not a trusted proxy, so what a client writes in
the header itself cannot move its failures to another address. Without trusted proxies the
header changes nothing: rotating it does not escape a block."""

from __future__ import annotations

from tests.conftest import TEAM_KEY, RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import (
    OTHER_SOURCE,
    THRESHOLD,
    guarded_config,
    send,
    valid,
)

CLIENT, NEIGHBOUR = "203.0.113.7", "203.0.113.8"


def forwarded(chain: str) -> dict[str, str]:
    return {"X-Forwarded-For": chain}


async def test_row_20_behind_a_trusted_proxy_the_forwarded_client_is_counted(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url, trusted_proxies=["127.0.0.1"]))

    guessed = await send(gateway.url, THRESHOLD + 1, headers=forwarded(CLIENT))
    neighbour = await send(gateway.url, key=TEAM_KEY, headers=forwarded(NEIGHBOUR))
    spoofed = await send(gateway.url, key=TEAM_KEY, headers=forwarded(f"{NEIGHBOUR}, {CLIENT}"))
    direct = await send(gateway.url, source=OTHER_SOURCE, headers=forwarded(NEIGHBOUR))

    assert guessed[-1].status == 429
    assert neighbour[0].status == 200
    assert spoofed[0].status == 429  # the proxy appended CLIENT; the left part is the client's
    assert direct[0].status == 401
    audited = [r["client_address"] for r in gateway.log_records("audit") if r["auth_failure"]]
    assert audited == [CLIENT] * (THRESHOLD + 1) + [CLIENT, OTHER_SOURCE]


async def test_row_20_without_trusted_proxies_the_header_is_ignored(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url))

    rotating = [
        (await send(gateway.url, headers=forwarded(f"198.51.100.{i}")))[0].status
        for i in range(THRESHOLD + 1)
    ]

    assert rotating == [401] * THRESHOLD + [429]
    assert (await valid(gateway.url)).status == 429
    audited = {r["client_address"] for r in gateway.log_records("audit") if r["auth_failure"]}
    assert audited == {"127.0.0.1"}
