"""SIGTERM, SIGINT or SIGQUIT (nginx's graceful stop) with streams in flight: the gateway
stops accepting connections at once, lets the in-flight streams finish (within
server.shutdown_timeout), writes their audit lines and exits 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import RunningUpstream, auth, chat_body
from tests.gateway_process import start_gateway_process


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name
)
async def test_a_stop_signal_drains_in_flight_streams_and_exits_cleanly(
    upstream: RunningUpstream, tmp_path: Path, stop: signal.Signals
) -> None:
    upstream.state.default = Behavior(delay=0.2)  # ten events: about two seconds a stream
    gateway = start_gateway_process(tmp_path, upstream.url, shutdown_timeout=10)
    try:
        async with aiohttp.ClientSession() as session:

            async def stream(i: int) -> bytes:
                body = chat_body(
                    stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}]
                )
                headers = {**auth(), "x-request-id": f"draining-{i}"}
                async with session.post(
                    f"{gateway.url}/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    assert resp.status == 200
                    return await resp.read()

            streams = [asyncio.create_task(stream(i)) for i in range(3)]
            await asyncio.sleep(0.5)
            gateway.process.send_signal(stop)
            await asyncio.sleep(0.3)
            refused = False
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{gateway.url}/healthz"):
                    pass
            except aiohttp.ClientConnectionError:
                refused = True
            answers = await asyncio.gather(*streams)
        exit_code = gateway.process.wait(timeout=20)
    finally:
        gateway.stop(signal.SIGKILL)

    assert refused, f"the gateway still accepted connections after {stop.name}"
    assert all(answer.endswith(b"data: [DONE]\n\n") for answer in answers)
    assert exit_code == 0
    audits = gateway.records("audit")
    assert sorted(r["request_id"] for r in audits) == ["draining-0", "draining-1", "draining-2"]
    assert all(r["outcome"] == "ok" for r in audits)
    assert [r["signal"] for r in gateway.records("shutting_down")] == [stop.name]
