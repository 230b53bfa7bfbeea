"""Row 20: a client that keeps presenting wrong keys is answered 429 once it has failed
`auth_failures.max_failures` times within the window, with the configuration's defaults
(20 failures in 60 s block the address for 300 s): the first 20 wrong keys get the one
401, the next gets 429 `too_many_auth_failures` in OpenAI's shape with `Retry-After`, and
so does everything after it, sequential or in a concurrent burst. Both counting backends:
the in-process one and a real redis-server.

Before this limit existed, every one of them was a 401 (2,000 wrong keys at 8,800/s: 2,000
x 401, no 429)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import (
    BACKENDS,
    WRONG_KEY,
    guarded_config,
    redis_url_for,
    send,
)

BURST = 300
THRESHOLD = 20  # the documented default of auth_failures.max_failures


@pytest.mark.parametrize("backend", BACKENDS)
async def test_row_20_the_failure_after_the_threshold_and_all_later_ones_get_429(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    gateway = await start_gateway(
        guarded_config(upstream.url, redis_url_for(backend, request), defaults=True)
    )

    first = await send(gateway.url, THRESHOLD + 1)
    burst = await send(gateway.url, BURST, concurrency=50)

    assert [reply.status for reply in first] == [401] * THRESHOLD + [429]
    refused = first[-1]
    assert refused.json() == {
        "error": {
            "message": refused.json()["error"]["message"],
            "type": "rate_limit_error",
            "param": None,
            "code": "too_many_auth_failures",
        }
    }
    assert 295 <= int(refused.headers["Retry-After"]) <= 300  # block_s, counted down
    assert WRONG_KEY not in refused.body.decode()
    assert Counter(reply.status for reply in burst) == {429: BURST}
    assert upstream.state.requests == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_row_20_a_concurrent_burst_gets_exactly_threshold_401s(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    gateway = await start_gateway(
        guarded_config(upstream.url, redis_url_for(backend, request), defaults=True)
    )

    burst = await send(gateway.url, BURST, concurrency=50)

    assert Counter(reply.status for reply in burst) == {401: THRESHOLD, 429: BURST - THRESHOLD}
