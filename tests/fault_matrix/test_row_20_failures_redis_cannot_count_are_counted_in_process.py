"""Row 20: when Redis cannot count a failure in time (here: nothing listens on its port),
the failure is counted in the gateway process instead, so the limit still holds, per
replica, and answered as that count says (401, then 429) in either failure mode:
authentication never depends on Redis. A valid key never waits for Redis and is served."""

from __future__ import annotations

import pytest

from tests.conftest import RunningUpstream, StartGateway, free_port, metric
from tests.fault_matrix.brute_force import THRESHOLD, guarded_config, send, valid


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_row_20_a_redis_outage_falls_back_to_the_process_count(
    start_gateway: StartGateway, upstream: RunningUpstream, mode: str
) -> None:
    raw = guarded_config(upstream.url, f"redis://127.0.0.1:{free_port()}/0")
    raw["rate_limits"]["failure_mode"] = mode
    gateway = await start_gateway(raw)

    served = await valid(gateway.url)
    replies = await send(gateway.url, THRESHOLD + 1)

    assert served.status == 200
    assert [reply.status for reply in replies] == [401] * THRESHOLD + [429]
    assert replies[0].json()["error"]["code"] == "invalid_api_key"
    assert replies[-1].json()["error"]["code"] == "too_many_auth_failures"
    assert await metric(gateway, "llm_gateway_auth_limiter_errors_total") == THRESHOLD + 1
    assert len(gateway.log_records("auth_failures_counted_locally")) == 1  # per interval
