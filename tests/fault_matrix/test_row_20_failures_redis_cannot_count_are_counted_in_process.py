"""Row 20: when Redis cannot count a failure in time (here: nothing listens on its port),
the failure is counted in the gateway process instead, so the limit still holds, per
replica, and `rate_limits.failure_mode` decides the answer: `open` answers as that count
says (401, then 429), `closed` answers 503 `rate_limiter_unavailable` until the address is
blocked. A valid key never waits for Redis and is served either way."""

from __future__ import annotations

import pytest

from tests.conftest import RunningUpstream, StartGateway, free_port, metric
from tests.fault_matrix.brute_force import THRESHOLD, guarded_config, send, valid


@pytest.mark.parametrize(("mode", "status"), [("open", 401), ("closed", 503)])
async def test_row_20_a_redis_outage_falls_back_to_the_process_count(
    start_gateway: StartGateway, upstream: RunningUpstream, mode: str, status: int
) -> None:
    raw = guarded_config(upstream.url, f"redis://127.0.0.1:{free_port()}/0")
    raw["rate_limits"]["failure_mode"] = mode
    gateway = await start_gateway(raw)

    served = await valid(gateway.url)
    replies = await send(gateway.url, THRESHOLD + 1)

    assert served.status == 200
    assert [reply.status for reply in replies] == [status] * THRESHOLD + [429]
    expected_code = "invalid_api_key" if mode == "open" else "rate_limiter_unavailable"
    assert replies[0].json()["error"]["code"] == expected_code
    assert replies[-1].json()["error"]["code"] == "too_many_auth_failures"
    assert await metric(gateway, "llm_gateway_auth_limiter_errors_total") == THRESHOLD + 1
    warnings = gateway.log_records("auth_failures_counted_locally")
    assert [w["failure_mode"] for w in warnings] == [mode]  # once per warn_interval_s
