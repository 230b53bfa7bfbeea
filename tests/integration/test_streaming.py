"""Streams are relayed event by event; a client that leaves stops the upstream; a stream
the upstream cuts ends with an OpenAI-shaped error event and never with a fake [DONE]."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
)


async def wait_until(condition: Callable[[], object], timeout: float = 2.0) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout, "condition never held"
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


def events(raw: bytes) -> list[str]:
    return [block.decode() for block in raw.split(b"\n\n") if block.strip()]


async def test_client_disconnect_mid_stream_closes_the_upstream_request(
    gateway: RunningGateway, upstream: RunningUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.state.default = Behavior(delay=0.1)
    body = chat_body(stream=True, messages=[{"role": "user", "content": "a b c d e f g h i j"}])
    headers = {**auth(), "x-request-id": "leaving-client-1"}

    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        await resp.content.readuntil(b"\n\n")
        resp.close()  # the client goes away after two events

    waited = await wait_until(lambda: upstream.state.disconnected)
    assert upstream.state.disconnected == ["leaving-client-1"]
    assert upstream.state.completed_streams == 0
    assert waited < 0.5
    await wait_until(
        lambda: [r["outcome"] for r in gateway.log_records("request")] == ["client_aborted"]
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert gateway.log_records("internal_error") == []  # a client leaving is not a bug


async def test_client_that_leaves_before_the_first_event_is_audited_as_aborted(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(delay=0.5)
    headers = {**auth(), "x-request-id": "early-leaver-1"}

    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(
                f"{gateway.url}/v1/chat/completions",
                json=chat_body(stream=True),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=0.1),
            )

    await wait_until(lambda: gateway.log_records("audit"))
    [audit] = gateway.log_records("audit")
    assert (audit["status"], audit["outcome"]) == (499, "client_aborted")
    assert gateway.log_records("internal_error") == []
    await wait_until(lambda: upstream.state.disconnected)


async def test_upstream_cut_mid_stream_ends_with_error_event_and_no_done(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.script.append(Behavior(abort_after=2))
    body = chat_body(stream=True, messages=[{"role": "user", "content": "one two three four"}])

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=auth()) as resp,
    ):
        assert resp.status == 200
        received = events(await resp.read())

    assert "data: [DONE]" not in received
    contents = [
        json.loads(e[6:])["choices"][0]["delta"].get("content")
        for e in received
        if '"choices"' in e
    ]
    assert contents == ["", "echo:", " one"]
    error = json.loads(received[-1].removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error"
    assert len(upstream.state.requests) == 1  # a started stream is never retried


async def test_stream_silent_before_its_first_event_is_a_504(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["timeouts"] = {"connect": 1, "first_byte": 5, "idle": 0.3, "total": 30}
    gateway = await start_gateway(raw)
    upstream.state.script.append(Behavior(delay=1.0))

    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
        ) as resp,
    ):
        body = await resp.json()

    assert resp.status == 504
    assert body["error"]["code"] == "upstream_timeout"
    assert time.perf_counter() - started < 1.0


async def test_stream_that_stalls_mid_way_ends_with_a_timeout_event(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["timeouts"] = {"connect": 1, "first_byte": 5, "idle": 0.3, "total": 30}
    gateway = await start_gateway(raw)
    upstream.state.script.append(Behavior(stall_after=2))

    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
        ) as resp,
    ):
        received = events(await resp.read())

    assert resp.status == 200
    assert len(received) == 4  # the role event, two words, the error
    assert json.loads(received[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
    assert time.perf_counter() - started < 1.0


async def test_request_id_is_propagated_and_returned(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    async with aiohttp.ClientSession() as session:
        given = {**auth(), "x-request-id": "trace-abc.123"}
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=given
        ) as resp:
            await resp.read()
            echoed = resp.headers["x-request-id"]
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth()
        ) as resp:
            generated = resp.headers["x-request-id"]

    assert echoed == "trace-abc.123"
    assert upstream.state.requests[0].headers["x-request-id"] == "trace-abc.123"
    assert len(generated) == 32 and upstream.state.requests[1].headers["x-request-id"] == generated


async def test_unsafe_request_id_is_replaced(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(),
            headers={**auth(), "x-request-id": "x" * 200},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["x-request-id"] != "x" * 200
