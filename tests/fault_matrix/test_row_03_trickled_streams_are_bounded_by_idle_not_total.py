"""Fault matrix row 3, slow streaming: a stream that trickles (bytes throttled by the fault
proxy, events far apart) is relayed event by event as each arrives, never buffered whole,
and is bound by the idle timeout between events, not by its overall length: a stream
longer than `idle` completes while no gap reaches it; a gap that does ends the stream with
an error event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from gateway.testing.fault_proxy import FaultProxy
from tests.conftest import RunningUpstream, StartGateway, auth, chat_body, config_dict, post_chat

IDLE = 0.5
MESSAGE = [{"role": "user", "content": "one two three four five six seven eight"}]


async def eventually(condition: Callable[[], object], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)


@pytest.fixture
async def proxy(upstream: RunningUpstream) -> AsyncIterator[FaultProxy]:
    host, port = upstream.server.host, upstream.server.port
    running = FaultProxy(str(host), int(port or 0))
    await running.start()
    yield running
    await running.close()


def through(proxy: FaultProxy, upstream: RunningUpstream) -> dict[str, object]:
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["base_url"] = f"http://127.0.0.1:{proxy.port}/v1"
    raw["upstreams"]["fake"]["timeouts"] = {
        "connect": 2,
        "first_byte": 5,
        "idle": IDLE,
        "total": 30,
    }
    return raw


async def test_row_03_a_throttled_stream_longer_than_idle_arrives_event_by_event_and_completes(
    start_gateway: StartGateway, upstream: RunningUpstream, proxy: FaultProxy
) -> None:
    gateway = await start_gateway(through(proxy, upstream))
    # About 250 bytes an event at 1 KB/s: four events a second, a gap well under IDLE,
    # and some 3 s for the stream, six times IDLE.
    proxy.throttle(1000)
    ended_at_first_event: list[int] = []
    events: list[bytes] = []

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(stream=True, messages=MESSAGE),
            headers=auth(),
        ) as resp,
    ):
        started = time.perf_counter()
        while event := await resp.content.readuntil(b"\n\n"):
            if not events:
                # Counted, not timed: the client has the first event while the gateway
                # has not finished the request (no audit line yet), so nothing waited
                # for the whole stream.
                ended_at_first_event.append(len(gateway.log_records("audit")))
            events.append(event)
        elapsed = time.perf_counter() - started

    assert resp.status == 200
    assert events[-1] == b"data: [DONE]\n\n"
    words = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert "".join(words) == "echo: one two three four five six seven eight"
    assert ended_at_first_event == [0]
    assert elapsed > 2 * IDLE  # longer than idle in all, and never cut for it


async def test_row_03_a_gap_longer_than_idle_ends_the_stream_with_a_timeout_event(
    start_gateway: StartGateway, upstream: RunningUpstream, proxy: FaultProxy
) -> None:
    gateway = await start_gateway(through(proxy, upstream))
    upstream.state.script.append(Behavior(stall_after=3))

    resp = await post_chat(gateway, chat_body(stream=True, messages=MESSAGE))
    raw = resp.body

    assert resp.status == 200
    assert b"data: [DONE]" not in raw
    assert raw.count(b'"content"') == 4  # the role event and three words
    assert raw.endswith(b'"code":"upstream_timeout"}}\n\n')
    await eventually(lambda: gateway.log_records("audit"))
    [audit] = gateway.log_records("audit")
    assert (audit["status"], audit["outcome"]) == (200, "upstream_cut")
    await eventually(lambda: upstream.state.disconnected)  # the stalled upstream is let go
