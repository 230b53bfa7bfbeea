"""Row 1: an upstream that refuses or resets the connection before any response.

Best in class: retried with jittered backoff, within the retry budget and the call's
deadline, as nothing reached the client yet; then a 503 in the OpenAI error shape (the
contract has no 502); every such failure counts toward the upstream's ejection."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    StartProxy,
    chat_body,
    config_dict,
    free_port,
    metric,
    post_chat,
)

# A shared, noisy two-core machine: "about X seconds" is asserted as "before X + SLACK".
SLACK = 0.5


def assert_openai_503(status: int, body: Any) -> None:
    assert status == 503
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "upstream_unavailable"


async def retries(gateway: RunningGateway, upstream: str) -> float:
    return await metric(
        gateway, "llm_gateway_upstream_retries_total", upstream=upstream, reason="unavailable"
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_row_01_reset_on_request_is_retried_then_503(
    start_gateway: StartGateway, upstream: RunningUpstream, stream: bool
) -> None:
    """The fake aborts the transport as each request arrives: three attempts (the
    default max_attempts) reach it, then the client gets a 503."""
    gateway = await start_gateway()
    upstream.state.default = Behavior(reset=True)

    started = time.monotonic()
    reply = await post_chat(gateway, chat_body(stream=stream))
    elapsed = time.monotonic() - started

    assert_openai_503(reply.status, reply.json())
    assert len(upstream.state.requests) == 3
    assert await retries(gateway, "fake") == 2
    # Two backoffs of at most 25 and 50 ms (backoff_base_ms 25): nowhere near the deadline.
    assert elapsed < 0.075 + SLACK


async def test_row_01_connections_reset_by_the_network_are_retried_then_503(
    start_gateway: StartGateway, upstream: RunningUpstream, start_proxy: StartProxy
) -> None:
    """A middlebox resets every connection (fault proxy): the attempts are counted as the
    connections the proxy accepted; the fake never sees a request."""
    proxy = await start_proxy(upstream.server.port or 0)
    gateway = await start_gateway(config_dict(f"http://127.0.0.1:{proxy.port}"))
    proxy.reset()

    reply = await post_chat(gateway, chat_body())

    assert_openai_503(reply.status, reply.json())
    assert proxy.accepted == 3
    assert upstream.state.requests == []
    proxy.heal()
    assert (await post_chat(gateway, chat_body())).status == 200  # and it recovers


async def test_row_01_refused_connection_is_retried_then_503(start_gateway: StartGateway) -> None:
    """A port with no listener: refused at once, three times."""
    gateway = await start_gateway(config_dict(f"http://127.0.0.1:{free_port()}"))

    started = time.monotonic()
    reply = await post_chat(gateway, chat_body())
    elapsed = time.monotonic() - started

    assert_openai_503(reply.status, reply.json())
    assert await retries(gateway, "fake") == 2
    assert elapsed < 0.075 + SLACK


async def test_row_01_backoff_never_outlasts_the_deadline(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    """Backoffs of up to 1 s against a 0.3 s deadline: a retry is made only when its
    backoff leaves room for it, so the 503 comes before the deadline, whatever the jitter
    drew, after 1 to 3 attempts."""
    raw = config_dict(upstream.url)
    raw["retries"] = {"deadline_s": 0.3, "backoff_base_ms": 1000, "backoff_max_ms": 1000}
    gateway = await start_gateway(raw)
    upstream.state.default = Behavior(reset=True)

    for _ in range(5):
        upstream.state.requests.clear()
        started = time.monotonic()
        reply = await post_chat(gateway, chat_body())
        elapsed = time.monotonic() - started

        assert_openai_503(reply.status, reply.json())
        assert 1 <= len(upstream.state.requests) <= 3
        assert elapsed < 0.3 + SLACK


async def test_row_01_resets_count_toward_ejection(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
) -> None:
    """Two upstreams, one resetting (`fake-b`: `fake` also serves another model, for
    which it is the last upstream and so never ejected): every request is answered by the
    other (a reset before any byte is retried elsewhere), and after 3 consecutive resets
    the resetting one is ejected and gets no more traffic."""
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake-b"] = {
        **raw["upstreams"]["fake"],
        "base_url": f"{spare_upstream.url}/v1",
    }
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "fake", "model": UPSTREAM_MODEL},
        {"upstream": "fake-b", "model": UPSTREAM_MODEL},
    ]
    raw["health"] = {"consecutive_failures": 3, "base_ejection_s": 60}
    gateway = await start_gateway(raw)
    spare_upstream.state.default = Behavior(reset=True)

    statuses = [(await post_chat(gateway, chat_body())).status for _ in range(40)]

    assert statuses == [200] * 40
    assert len(spare_upstream.state.requests) == 3  # K resets, then ejected
    assert len(upstream.state.requests) == 40
    assert await metric(gateway, "llm_gateway_upstream_ejections_total", upstream="fake-b") == 1
    assert await metric(gateway, "llm_gateway_upstream_healthy", upstream="fake-b") == 0
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        assert (await resp.json())["upstreams"]["fake-b"]["state"] == "ejected"
