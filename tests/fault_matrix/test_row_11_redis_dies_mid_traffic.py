"""Row 11: Redis dies (kill -9 of a real redis-server) while traffic flows, and comes back.

Best in class: no request waits longer than the per-call deadline; the breaker opens (for
`redis_retry_interval_s` requests skip Redis instead of each trying it: counted here as
the connections the gateway opens through a fault proxy in front of Redis, with nothing
but the proxy between them); the degraded mode is explicit (`/readyz`, metrics) and logged
once per interval, not per request; once Redis is back, requests are decided by it again
within one retry interval, with no restart of the gateway."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import math
import time
from dataclasses import dataclass

import aiohttp
import pytest

from tests.conftest import (
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    StartProxy,
    auth,
    chat_body,
    config_dict,
    metric,
)

DEADLINE_S = 0.1
RETRY_INTERVAL_S = 0.3
WARN_INTERVAL_S = 0.4
WORKERS = 8
OUTAGE_S = 1.0
SLACK = 0.4  # a shared two-core machine


@dataclass(frozen=True)
class Outcome:
    at: float  # when the request was sent (monotonic)
    status: int
    decided: bool  # Redis decided it (its rate-limit headers are there)
    latency: float


async def worker(
    session: aiohttp.ClientSession, gateway: RunningGateway, until: asyncio.Event
) -> list[Outcome]:
    outcomes = []
    while not until.is_set():
        started = time.monotonic()
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth()
        ) as resp:
            await resp.read()
        outcomes.append(
            Outcome(
                started,
                resp.status,
                "x-ratelimit-limit-requests" in resp.headers,
                time.monotonic() - started,
            )
        )
        await asyncio.sleep(0.005)
    return outcomes


def timestamp(record: dict[str, str]) -> float:
    return datetime.datetime.fromisoformat(record["timestamp"]).timestamp()


@pytest.mark.parametrize("failure_mode", ["open", "closed"])
async def test_row_11_redis_killed_mid_traffic_costs_one_deadline_at_most_and_heals(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    own_redis: RedisProcess,
    start_proxy: StartProxy,
    failure_mode: str,
) -> None:
    proxy = await start_proxy(own_redis.port)
    raw = config_dict(upstream.url)
    raw["rate_limits"] = {
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
        "failure_mode": failure_mode,
        "redis_timeout_ms": DEADLINE_S * 1000,
        "redis_retry_interval_s": RETRY_INTERVAL_S,
        "warn_interval_s": WARN_INTERVAL_S,
    }
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 1_000_000}
    gateway = await start_gateway(raw)
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as session:
        workers = [asyncio.create_task(worker(session, gateway, stop)) for _ in range(WORKERS)]
        await asyncio.sleep(0.3)
        killed = time.monotonic()
        own_redis.kill()
        connections_at_kill = proxy.accepted
        await asyncio.sleep(OUTAGE_S)
        async with session.get(f"{gateway.url}/readyz") as resp:
            during = await resp.json()
        probes = proxy.accepted - connections_at_kill
        own_redis.start()
        restarted = time.monotonic()
        await asyncio.sleep(RETRY_INTERVAL_S + SLACK)
        stop.set()
        outcomes = sorted(
            (o for task in await asyncio.gather(*workers) for o in task), key=lambda o: o.at
        )
        async with session.get(f"{gateway.url}/readyz") as resp:
            after = await resp.json()

    before = [o for o in outcomes if o.at + o.latency < killed]
    outage = [o for o in outcomes if killed + 0.05 < o.at < restarted]
    recovered = [o for o in outcomes if o.at > restarted and o.decided]
    assert before and all(o.decided and o.status == 200 for o in before)

    # No request waited for the dead Redis longer than the deadline.
    assert max(o.latency for o in outcomes) < DEADLINE_S + SLACK
    # The failure mode, and only it, during the outage.
    expected = 200 if failure_mode == "open" else 503
    assert len(outage) > 50 and {(o.status, o.decided) for o in outage} == {(expected, False)}
    assert during["rate_limiter"] == "redis-unavailable"
    errors = await metric(gateway, "llm_gateway_rate_limiter_errors_total")
    assert errors >= len(outage)
    # The breaker: at most one probe per worker per retry interval reached for Redis.
    windows = math.ceil(OUTAGE_S / RETRY_INTERVAL_S) + 1
    assert probes <= windows * WORKERS, (probes, len(outage))
    # Logged once per interval, not once per request.
    warnings = [timestamp(r) for r in gateway.log_records("rate_limiter_unavailable")]
    assert 1 <= len(warnings) <= math.ceil((restarted - killed + SLACK) / WARN_INTERVAL_S) + 1
    assert all(b - a >= WARN_INTERVAL_S * 0.99 for a, b in itertools.pairwise(warnings))
    # Automatic recovery within one retry interval of Redis being back.
    assert recovered, "no request was decided by Redis after it came back"
    assert recovered[0].at - restarted < RETRY_INTERVAL_S + SLACK
    assert all(o.status == 200 for o in recovered)
    assert after["rate_limiter"] == "redis"
