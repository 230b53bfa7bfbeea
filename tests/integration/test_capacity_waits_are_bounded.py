"""Waiting for model capacity is bounded: a request whose wait passes `max_wait_ms` is
answered 503 `model_overloaded` with Retry-After and is never sent upstream; a team whose
queue holds `max_depth` is refused at once; and clients that leave while queued leave
nothing behind (queue depth and concurrency leases back to 0)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import (
    MODEL,
    TEAM_KEY,
    RedisProcess,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    sdk_for,
)
from tests.integration.capacity import capacity_config, client_session, post

SERVICE_S = 1.0


def held_config(upstream: RunningUpstream, spare: RunningUpstream, **queue: Any) -> dict[str, Any]:
    """One slot per upstream, each answer taking a second: two requests fill the model."""
    raw = capacity_config(upstream, spare, 1, SERVICE_S)
    raw["queue"] = queue
    return raw


async def fill(session: aiohttp.ClientSession, gateway: RunningGateway) -> list[asyncio.Task[Any]]:
    """Two requests of team-b holding both slots (for a second)."""
    holders = [asyncio.create_task(post(session, gateway, "team-b")) for _ in range(2)]
    await asyncio.sleep(0.2)
    return holders


async def metric(gateway: RunningGateway, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and 'team="team-a"' in line
    )


async def test_a_wait_past_max_wait_is_answered_503_and_never_sent_upstream(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(held_config(upstream, spare_upstream, max_wait_ms=200))
    async with client_session() as session:
        holders = await fill(session, gateway)
        sent_before = len(upstream.state.requests) + len(spare_upstream.state.requests)
        status, headers, took = await post(session, gateway, "team-a")
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth(TEAM_KEY)
        ) as resp:
            body = await resp.json()
        sent_after = len(upstream.state.requests) + len(spare_upstream.state.requests)
        await asyncio.gather(*holders)

    assert status == 503
    assert 0.2 <= took < 0.2 + 0.3
    assert headers["Retry-After"] == "1"
    assert body["error"]["code"] == "model_overloaded"
    assert body["error"]["type"] == "service_unavailable_error"
    assert "capacity" in body["error"]["message"] and "rate limit" in body["error"]["message"]
    assert sent_after == sent_before  # neither was sent anywhere
    assert await metric(gateway, "llm_gateway_queue_rejected_total{") == 2


async def test_a_full_queue_refuses_at_once(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(held_config(upstream, spare_upstream, max_depth=3))
    async with client_session() as session:
        holders = await fill(session, gateway)
        queued = [asyncio.create_task(post(session, gateway, "team-a")) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert await metric(gateway, "llm_gateway_queue_depth{") == 3
        status, headers, took = await post(session, gateway, "team-a")
        results = await asyncio.gather(*queued, *holders)

    assert (status, headers["Retry-After"]) == (503, "5")  # max_wait_ms 5000 by default
    assert took < 0.2
    assert [result[0] for result in results] == [200] * 5  # those in line were served


async def until(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_clients_that_leave_the_line_leave_nothing_behind(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    redis_server: RedisProcess,
) -> None:
    raw = capacity_config(upstream, spare_upstream, 1, 5.0)  # the holders hold 5 s
    raw["queue"] = {"max_depth": 500}
    # Leases one by one in Redis (no slices), where they can be counted.
    raw["rate_limits"] = {"redis_url": redis_server.url, "slices": False}
    raw["teams"]["team-a"]["limits"] = {"max_concurrent": 1000}
    gateway = await start_gateway(raw)
    inflight = "llmgw:{team-a}:inflight"

    async def depth() -> float:
        return await metric(gateway, "llm_gateway_queue_depth{")

    async def depth_is(value: float) -> bool:
        return await depth() == value

    async def leases_released() -> bool:
        return redis_server.command("ZCARD", inflight) == b":0\r\n"

    async with client_session() as session:
        holders = await fill(session, gateway)
        leaving = [asyncio.create_task(post(session, gateway, "team-a")) for _ in range(200)]
        assert await until(lambda: depth_is(200), 3.0), await depth()
        held = redis_server.command("ZCARD", inflight)
        for client in leaving:
            client.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        emptied = await until(lambda: depth_is(0), 2.0)
        released = await until(leases_released, 2.0)
        sent = len(upstream.state.requests) + len(spare_upstream.state.requests)
        for holder in holders:
            holder.cancel()

    assert held == b":200\r\n"  # each of the 200 held its lease while it waited
    assert emptied and released
    assert sent == 2  # the holders: none of the 200 that left reached an upstream


async def test_the_openai_sdk_sees_model_overloaded_as_a_503_with_its_code(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(held_config(upstream, spare_upstream, max_wait_ms=100))
    async with client_session() as session, sdk_for(gateway) as sdk:
        holders = await fill(session, gateway)
        with pytest.raises(openai.InternalServerError) as refused:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello there"}]
            )
        await asyncio.gather(*holders)

    assert refused.value.status_code == 503
    assert refused.value.code == "model_overloaded"
    assert refused.value.response.headers["Retry-After"] == "1"
