"""The Redis backend against a real redis-server: exact across gateway replicas, one
script per decision, keys that expire and share a hash tag, and a Redis outage that costs
at most the configured deadline and heals by itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    RedisProcess,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    free_port,
    redis_limited_config,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[2]


async def post(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], float]:
    started = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", json=chat_body(), headers=auth()) as resp:
        await resp.read()
        return resp.status, dict(resp.headers), time.perf_counter() - started


async def test_keys_share_the_team_hash_tag_and_expire(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    limits = {"requests_per_minute": 10, "tokens_per_minute": 10_000, "max_concurrent": 3}
    gateway = await start_gateway(redis_limited_config(upstream.url, redis_server.url, limits))
    upstream.state.default = upstream.state.default.__class__(delay=0.2)

    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
        )
        keys = sorted(redis_server.command("KEYS", "*").decode().split("\r\n")[2::2])
        ttls = [int(redis_server.command("PTTL", key)[1:].strip()) for key in keys]
        resp.close()

    assert keys == [
        "llmgw:{team-a}:inflight",
        "llmgw:{team-a}:rpm",
        "llmgw:{team-a}:tickets",
        "llmgw:{team-a}:tpm",
    ]
    assert all(ttl > 0 for ttl in ttls), ttls


async def test_admission_survives_a_flushed_script_cache(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    gateway = await start_gateway(
        redis_limited_config(upstream.url, redis_server.url, {"requests_per_minute": 3})
    )
    async with aiohttp.ClientSession() as session:
        first = await post(session, gateway.url)
        assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
        rest = [await post(session, gateway.url) for _ in range(3)]

    assert [s for s, _, _ in (first, *rest)] == [200, 200, 200, 429]


async def test_another_replica_sees_usage_once_the_settle_delay_and_a_round_trip_passed(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    raw = redis_limited_config(upstream.url, redis_server.url, {"tokens_per_minute": 1000})
    replica_a, replica_b = await start_gateway(raw), await start_gateway(raw)
    upstream.state.default = Behavior(usage_total=900)
    body = chat_body(max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    reserved = 4 + 1 + 5

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(
            f"{replica_a.url}/v1/chat/completions", json=body, headers=auth()
        ) as resp:
            assert resp.status == 200
        # The documented bound is the settle delay (5 ms) plus one Redis round trip; wait
        # far longer, for a shared and noisy machine.
        await asyncio.sleep(0.2)
        answers = []
        for _ in range(2):
            async with session.post(
                f"{replica_b.url}/v1/chat/completions", json=body, headers=auth()
            ) as resp:
                remaining = resp.headers.get("x-ratelimit-remaining-tokens")
                warnings = [r for r in replica_b.log_records() if r.get("level") == "warning"]
                assert remaining is not None, (resp.status, await resp.text(), warnings)
                answers.append((resp.status, remaining))
        refill = (time.monotonic() - started) * 1000 / 60

    (first, left), second = answers
    assert first == 200
    assert 1000 - 900 - reserved - 1 <= int(left) <= 1000 - 900 - reserved + refill + 1
    assert second == (429, "0")


@pytest.fixture
def replicas(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> Iterator[list[str]]:
    """Three gateway processes sharing one redis-server."""
    # A generous deadline: three gateways, their client, Redis and the upstream share two
    # cores here, and this test is about exactness, not the fail-open path (tested below).
    raw = redis_limited_config(
        upstream.url, redis_server.url, {"requests_per_minute": 10}, redis_timeout_ms=2000
    )
    raw["server"]["log_level"] = "warning"
    raw["server"]["log_format"] = "json"
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    env = {**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY}
    for i in range(3):
        port = free_port()
        raw["server"]["port"] = port
        path = tmp_path / f"replica-{i}.yaml"
        path.write_text(yaml.safe_dump(raw))
        with (tmp_path / f"replica-{i}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        urls.append(f"http://127.0.0.1:{port}")
    yield urls
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


async def test_three_replicas_admit_exactly_the_limit_together(
    replicas: list[str], tmp_path: Path
) -> None:
    for url in replicas:  # wait until all three serve
        await wait_ready(url)
    async with aiohttp.ClientSession() as session:
        # 60 clients at once, spread over the replicas; the limit is 10 per minute.
        results = await asyncio.gather(*(post(session, replicas[i % 3]) for i in range(60)))

    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("replica-*.log")))
    assert "rate_limiter_unavailable" not in logs, logs  # every decision came from Redis
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 50
    for status, headers, _ in results:
        if status == 429:
            assert 1 <= int(headers["Retry-After"]) <= 6


@pytest.mark.parametrize("fault", ["killed", "paused"])
async def test_fail_open_admits_within_the_deadline_and_recovers(
    start_gateway: StartGateway, upstream: RunningUpstream, own_redis: RedisProcess, fault: str
) -> None:
    gateway = await start_gateway(
        redis_limited_config(
            upstream.url,
            own_redis.url,
            {"requests_per_minute": 2},
            failure_mode="open",
            redis_timeout_ms=100,
            redis_retry_interval_s=0.3,
        )
    )
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gateway.url))[0] == 200

        paused_until = time.monotonic() + 1.5
        if fault == "killed":
            own_redis.kill()
        else:  # alive but unresponsive, for 1.5 s
            own_redis.command("CLIENT", "PAUSE", "1500", "ALL")
        outage = [await post(session, gateway.url) for _ in range(6)]

        assert [status for status, _, _ in outage] == [200] * 6  # admitted, unlimited
        assert max(elapsed for _, _, elapsed in outage) < 0.1 + 0.15
        assert all("x-ratelimit-limit-requests" not in h for _, h, _ in outage)
        async with session.get(f"{gateway.url}/readyz") as ready:
            assert (await ready.json())["rate_limiter"] == "redis-unavailable"
        async with session.get(f"{gateway.url}/metrics") as resp:
            assert "llm_gateway_rate_limiter_fail_open_total 6.0" in await resp.text()

        if fault == "killed":
            own_redis.start()
        else:
            await asyncio.sleep(max(0.0, paused_until - time.monotonic()))
        await asyncio.sleep(0.35)
        recovered = [(await post(session, gateway.url))[0] for _ in range(4)]

    warnings = [r for r in gateway.log_records() if r["event"] == "rate_limiter_unavailable"]
    assert len(warnings) == 1  # once per interval, not once per request
    # A fresh Redis (killed) starts the team over; a paused one kept its first request.
    assert recovered == ([200, 200, 429, 429] if fault == "killed" else [200, 429, 429, 429])


async def test_fail_closed_refuses_with_503_and_recovers(
    start_gateway: StartGateway, upstream: RunningUpstream, own_redis: RedisProcess
) -> None:
    gateway = await start_gateway(
        redis_limited_config(
            upstream.url,
            own_redis.url,
            {"requests_per_minute": 100},
            failure_mode="closed",
            redis_timeout_ms=100,
            redis_retry_interval_s=0.3,
        )
    )
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gateway.url))[0] == 200
        own_redis.kill()
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth()
        ) as resp:
            body = await resp.json()
        assert resp.status == 503
        assert body["error"]["code"] == "rate_limiter_unavailable"
        calls_during_outage = len(upstream.state.requests)

        own_redis.start()
        await asyncio.sleep(0.35)
        assert (await post(session, gateway.url))[0] == 200

    assert calls_during_outage == 1  # the refused request never reached the upstream
