"""SIGTERM, SIGINT or SIGQUIT to the parent of `serve --workers 2`: it forwards the signal
to both workers, each stops accepting and lets its in-flight streams finish (with their
audit lines), no worker is restarted, and the parent exits 0 once both have."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.app import WORKER_HEADER
from gateway.testing.fake_upstream import Behavior
from tests.conftest import RedisProcess, RunningUpstream, auth, chat_body
from tests.integration.workers import fresh_connections, start_workers, until

HELD, MOST_STREAMS = 1, 40  # streams on each worker when the signal comes
WORDS = " ".join(["word"] * 15)  # fifteen events, 0.1 s apart


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name
)
async def test_a_stop_signal_drains_every_worker_and_the_parent_exits_0(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path, stop: signal.Signals
) -> None:
    upstream.state.default = Behavior(delay=0.1)
    gateway = start_workers(tmp_path, upstream.url, redis_server.url)
    try:
        async with fresh_connections() as session:
            held: dict[str, list[asyncio.Task[bytes]]] = {"1": [], "2": []}
            for i in range(MOST_STREAMS):
                if min(len(s) for s in held.values()) >= HELD:
                    break
                resp = await session.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=chat_body(stream=True, messages=[{"role": "user", "content": WORDS}]),
                    headers={**auth(), "x-request-id": f"draining-{i}"},
                )
                assert resp.status == 200
                held[resp.headers[WORKER_HEADER]].append(asyncio.create_task(_rest(resp)))
            streams = held["1"] + held["2"]
            assert min(len(s) for s in held.values()) >= HELD

            gateway.process.send_signal(stop)
            await until(lambda: len(gateway.records("shutting_down")) == 2)
            await asyncio.sleep(0.2)  # from its log line to its listening socket closed
            refused = 0
            for _ in range(8):  # each lands on one worker or the other: both must refuse
                try:
                    async with session.get(f"{gateway.url}/healthz"):
                        pass
                except aiohttp.ClientConnectionError:
                    refused += 1
            answers = await asyncio.gather(*streams)
        exit_code = gateway.process.wait(timeout=30)
    finally:
        gateway.stop(signal.SIGKILL)

    assert refused == 8
    assert all(answer.endswith(b"data: [DONE]\n\n") for answer in answers)
    assert exit_code == 0
    audited = sorted(r["request_id"] for r in gateway.records("audit"))
    assert len(audited) == len(answers)
    assert all(r["outcome"] == "ok" for r in gateway.records("audit"))
    assert sorted(r["worker"] for r in gateway.records("shutting_down")) == ["1", "2"]
    assert [(r["worker"], r["exit_code"]) for r in gateway.records("worker_stopped")] in (
        [("1", 0), ("2", 0)],
        [("2", 0), ("1", 0)],
    )
    assert len(gateway.records("worker_started")) == 2  # none restarted


async def _rest(resp: aiohttp.ClientResponse) -> bytes:
    async with resp:
        return await resp.read()
