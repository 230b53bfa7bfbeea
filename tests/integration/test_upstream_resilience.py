"""Several upstreams per model: weighted balancing, passive health (ejection after K
failures, never the last upstream), retries on another upstream within a budget, and
errors reported inside streams. Timeouts have their own file (test_upstream_timeouts)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OTHER_TEAM_MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    post_chat,
)


@pytest.fixture
def second(spare_upstream: RunningUpstream) -> RunningUpstream:
    return spare_upstream


def two_upstreams(
    first: RunningUpstream, second: RunningUpstream, **sections: Any
) -> dict[str, Any]:
    """MODEL served by `fake` (first) and `fake-b` (second), weights 1:1 unless given."""
    raw = config_dict(first.url)
    raw["upstreams"]["fake-b"] = {**raw["upstreams"]["fake"], "base_url": f"{second.url}/v1"}
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "fake", "model": UPSTREAM_MODEL},
        {"upstream": "fake-b", "model": UPSTREAM_MODEL},
    ]
    raw.update(sections)
    return raw


async def post(gateway: RunningGateway, **params: Any) -> tuple[int, dict[str, Any]]:
    reply = await post_chat(gateway, chat_body(**params))
    return reply.status, reply.json()


async def readyz(gateway: RunningGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_failing_upstream_is_retried_around_then_ejected_after_k_failures(
    start_gateway: StartGateway, upstream: RunningUpstream, second: RunningUpstream
) -> None:
    gateway = await start_gateway(
        two_upstreams(
            upstream,
            second,
            health={"consecutive_failures": 3, "base_ejection_s": 60},
        )
    )
    second.state.default = Behavior(status=503)

    statuses = [(await post(gateway))[0] for _ in range(30)]

    assert statuses == [200] * 30
    assert len(second.state.requests) == 3  # K failures, then no traffic while ejected
    assert len(upstream.state.requests) == 30  # every request answered by the healthy one
    health = (await readyz(gateway))["upstreams"]
    assert health["fake-b"]["state"] == "ejected"
    assert health["fake"]["state"] == "healthy"


async def test_the_last_upstream_of_a_model_is_never_ejected(
    start_gateway: StartGateway, upstream: RunningUpstream, second: RunningUpstream
) -> None:
    raw = two_upstreams(upstream, second, health={"consecutive_failures": 2, "base_ejection_s": 60})
    # The suite's other model is served by `fake` alone, which would make `fake` the last
    # upstream of that model from the start: both serve it here, so whichever of the two
    # fails twice first (500s are not retried: one random pick per request) is ejected
    # and the other is the last one of both models.
    raw["models"][OTHER_TEAM_MODEL]["upstreams"] = raw["models"][MODEL]["upstreams"]
    gateway = await start_gateway(raw)
    upstream.state.default = second.state.default = Behavior(status=500)

    for _ in range(10):
        assert (await post(gateway))[0] == 503

    health = (await readyz(gateway))["upstreams"]
    assert sorted(health[name]["state"] for name in ("fake", "fake-b")) == ["ejected", "healthy"]
    upstream.state.default = second.state.default = Behavior()
    assert (await post(gateway))[0] == 200  # the one left in service serves again


async def test_an_ejected_upstream_returns_after_its_cool_down(
    start_gateway: StartGateway, upstream: RunningUpstream, second: RunningUpstream
) -> None:
    gateway = await start_gateway(
        two_upstreams(upstream, second, health={"consecutive_failures": 1, "base_ejection_s": 0.3})
    )
    second.state.script.append(Behavior(status=503))

    while not second.state.requests:
        assert (await post(gateway))[0] == 200
    assert (await readyz(gateway))["upstreams"]["fake-b"]["state"] == "ejected"
    await asyncio.sleep(0.35)
    before = len(second.state.requests)
    for _ in range(20):
        assert (await post(gateway))[0] == 200

    assert len(second.state.requests) > before  # probed by real traffic, and kept
    assert (await readyz(gateway))["upstreams"]["fake-b"]["state"] == "healthy"


async def test_retry_budget_bounds_attempts_when_every_upstream_fails(
    start_gateway: StartGateway, upstream: RunningUpstream, second: RunningUpstream
) -> None:
    gateway = await start_gateway(
        two_upstreams(
            upstream,
            second,
            health={"consecutive_failures": 1000},
            retries={"max_attempts": 3, "budget_ratio": 0.2, "budget_min": 3},
        )
    )
    upstream.state.default = second.state.default = Behavior(status=503, delay=0.2)

    results = await asyncio.gather(*(post(gateway) for _ in range(30)))

    attempts = len(upstream.state.requests) + len(second.state.requests)
    assert [status for status, _ in results] == [503] * 30
    # 30 first attempts; at most 20% of 30 (6) retries in flight at once, and each of
    # those requests makes at most 2: far below the 90 attempts that 3 tries each would be.
    assert 30 + 3 <= attempts <= 30 + 2 * 6
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        metrics = await resp.text()
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith("llm_gateway_upstream_retries_over_budget_total")
    ]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 30 - 6


async def test_weights_share_traffic(
    start_gateway: StartGateway, upstream: RunningUpstream, second: RunningUpstream
) -> None:
    raw = two_upstreams(upstream, second)
    raw["models"][MODEL]["upstreams"][0]["weight"] = 4
    gateway = await start_gateway(raw)

    for _ in range(200):
        assert (await post(gateway))[0] == 200

    share = len(upstream.state.requests) / 200
    assert 0.7 <= share <= 0.9  # 4:1 is 0.8


async def test_error_inside_a_stream_before_any_event_is_a_proper_status(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(stream_error=400)

    status, body = await post(gateway, stream=True)

    assert status == 400
    assert body["error"]["message"] == "fake upstream error 400 inside the stream"
    assert len(upstream.state.requests) == 1


async def test_overload_reported_inside_a_stream_is_retried_before_anything_was_sent(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.script.append(Behavior(stream_error=503))

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
        ) as resp,
    ):
        raw = await resp.read()

    assert resp.status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert len(upstream.state.requests) == 2


async def test_error_inside_a_stream_after_events_ends_it_with_an_openai_error_event(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(stream_error=503, error_after=2)

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(stream=True, messages=[{"role": "user", "content": "a b c d"}]),
            headers=auth(),
        ) as resp,
    ):
        events = [e for e in (await resp.read()).decode().split("\n\n") if e]

    assert resp.status == 200
    assert "data: [DONE]" not in events
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == "The upstream failed (HTTP 503)."
    assert len(upstream.state.requests) == 1  # bytes reached the client: never retried


async def test_dropped_parameter_is_named_in_a_header(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["models"]["gpt-4o-mini"]["drop_params"] = ["top_k"]
    gateway = await start_gateway(raw)

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(model="gpt-4o-mini", top_k=5, temperature=0.5),
            headers=auth(),
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["x-gateway-dropped-params"] == "top_k"

    sent = upstream.state.requests[-1].body
    assert "top_k" not in sent and sent["temperature"] == 0.5
