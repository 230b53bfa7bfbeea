"""Row 20: a block lasts `block_s`, then the address starts afresh: its valid key is served
again and a wrong key is a 401 of a new window. Both counting backends."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import (
    BACKENDS,
    THRESHOLD,
    guarded_config,
    redis_url_for,
    send,
    valid,
)

BLOCK_S = 0.5


@pytest.mark.parametrize("backend", BACKENDS)
async def test_row_20_a_blocked_address_is_served_again_after_block_s(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    raw = guarded_config(
        upstream.url, redis_url_for(backend, request), window_s=BLOCK_S, block_s=BLOCK_S
    )
    gateway = await start_gateway(raw)
    refused = (await send(gateway.url, THRESHOLD + 1))[-1]
    assert refused.status == 429
    assert 0 < int(refused.headers["retry-after-ms"]) <= BLOCK_S * 1000
    assert (await valid(gateway.url)).status == 429

    await asyncio.sleep(int(refused.headers["retry-after-ms"]) / 1000 + 0.05)

    assert (await valid(gateway.url)).status == 200
    assert [reply.status for reply in await send(gateway.url, THRESHOLD)] == [401] * THRESHOLD
    assert (await send(gateway.url))[0].status == 429
