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
    wait_for,
)

DEADLINE_S = 0.25  # generous: the gateway, its clients and the fake share one event loop
RETRY_INTERVAL_S = 0.3
WARN_INTERVAL_S = 0.4
WORKERS = 6
OUTAGE_S = 1.0
SLACK = 0.4  # a shared two-core machine


@dataclass(frozen=True)
class Outcome:
    at: float  # when the request was sent (monotonic)
    status: int
    decided: bool  # Redis decided it (its rate-limit headers are there)
    latency: float


async def worker(
    session: aiohttp.ClientSession,
    gateway: RunningGateway,
    until: asyncio.Event,
    outcomes: list[Outcome],
) -> None:
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
        # Every admission a Redis call: this row is about what a dead Redis costs them.
        # (With budget slices a live slice admits without Redis until it expires: see
        # tests/integration/test_budget_slices.py.)
        "slices": False,
    }
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 1_000_000}
    gateway = await start_gateway(raw)
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    samples: list[str] = []  # /readyz's rate_limiter during the outage

    async with aiohttp.ClientSession() as session:
        workers = [
            asyncio.create_task(worker(session, gateway, stop, outcomes)) for _ in range(WORKERS)
        ]
        await wait_for(lambda: sum(o.decided for o in outcomes) >= WORKERS, 5.0)
        killed = time.monotonic()
        own_redis.kill()
        connections_at_kill = proxy.accepted
        while time.monotonic() - killed < OUTAGE_S:
            await asyncio.sleep(0.05)
            async with session.get(f"{gateway.url}/readyz") as resp:
                samples.append((await resp.json())["rate_limiter"])
        probes = proxy.accepted - connections_at_kill
        restarted = time.monotonic()
        await asyncio.to_thread(own_redis.start)
        back = time.monotonic()  # Redis answers again
        await wait_for(lambda: any(o.decided and o.at > back for o in outcomes), 3.0)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)
        async with session.get(f"{gateway.url}/readyz") as resp:
            after = await resp.json()
    outcomes.sort(key=lambda o: o.at)

    before = [o for o in outcomes if o.at + o.latency < killed]
    outage = [o for o in outcomes if killed + 0.05 < o.at < restarted]
    recovered = [o for o in outcomes if o.at > back and o.decided]
    assert sum(o.decided and o.status == 200 for o in before) >= WORKERS

    # No request waited for the dead Redis longer than the deadline (plus the time this
    # one event loop, shared by the clients, the gateway and the fake, takes under load).
    assert max(o.latency for o in outcomes) < DEADLINE_S + 2 * SLACK
    # The failure mode, and only it, during the outage.
    expected = 200 if failure_mode == "open" else 503
    assert len(outage) > 20 and {(o.status, o.decided) for o in outage} == {(expected, False)}
    # Degraded, as /readyz says (but for the moments between a retry interval's end and
    # the next request's probe, when the breaker does not know yet).
    assert samples.count("redis-unavailable") >= len(samples) / 2, samples
    errors = await metric(gateway, "llm_gateway_rate_limiter_errors_total")
    assert errors >= len(outage)
    # The breaker: at most one probe per worker per retry interval reached for Redis.
    windows = math.ceil(OUTAGE_S / RETRY_INTERVAL_S) + 1
    assert probes <= windows * WORKERS, (probes, len(outage))
    # Logged once per interval, not once per request.
    warnings = [timestamp(r) for r in gateway.log_records("rate_limiter_unavailable")]
    run_s = outcomes[-1].at - outcomes[0].at
    assert 1 <= len(warnings) <= math.ceil(run_s / WARN_INTERVAL_S) + 1
    assert all(b - a >= WARN_INTERVAL_S * 0.99 for a, b in itertools.pairwise(warnings))
    # Automatic recovery within one retry interval of Redis being back.
    assert recovered, "no request was decided by Redis after it came back"
    # (Generously: the first request after it may still be in its retry interval, and a
    # loaded machine delays the probe and its reconnection.)
    assert recovered[0].at - back < RETRY_INTERVAL_S + 2.5 * SLACK
    assert all(o.status == 200 for o in recovered)
    assert after["rate_limiter"] == "redis"
