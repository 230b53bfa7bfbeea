"""Row 21: SIGTERM while streams are in flight (the gateway as a real process).

Best in class: readiness fails at once and new connections are refused; the streams in
flight go on until they end or until the drain deadline (`server.shutdown_timeout`),
where each ends with an error event that says so and no `[DONE]` (and the upstream calls
with them); every request still gets its audit line; the process exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    RunningUpstream,
    auth,
    chat_body,
    config_dict,
    free_port,
    wait_for,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 5
EVENT_DELAY_S = 0.1
SLACK = 0.7  # a shared two-core machine


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def audits(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("event") == "audit"]

    def complaints(self) -> list[str]:
        """Log lines that are not the gateway's JSON lines (a traceback, asyncio's "Task
        was destroyed but it is pending!"), or that are warnings or errors."""
        return [
            line
            for line in self.log.read_text().splitlines()
            if not line.startswith("{") or json.loads(line).get("level") in ("warning", "error")
        ]


StartProcess = Callable[[float], Awaitable[Gateway]]


@pytest.fixture
async def start_process(upstream: RunningUpstream, tmp_path: Path) -> AsyncIterator[StartProcess]:
    """Starts `llm-gateway serve` in front of the fake upstream, with a drain deadline."""
    processes: list[subprocess.Popen[bytes]] = []

    async def start(shutdown_timeout: float) -> Gateway:
        port = free_port()
        raw = config_dict(upstream.url)
        raw["server"].update(port=port, shutdown_timeout=shutdown_timeout, log_level="info")
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump(raw))
        log = tmp_path / "gateway.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=ROOT,
                env={**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        gateway = Gateway(f"http://127.0.0.1:{port}", process, log)
        await wait_ready(gateway.url)
        return gateway

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@dataclass
class Stream:
    request_id: str
    started: asyncio.Event = field(default_factory=asyncio.Event)
    body: bytes = b""
    cut: bool = False  # the connection ended before the stream did
    ended_at: float = 0.0

    @property
    def done(self) -> bool:
        return self.body.endswith(b"data: [DONE]\n\n")


async def run_stream(session: aiohttp.ClientSession, url: str, out: Stream, words: int) -> None:
    body = chat_body(stream=True, messages=[{"role": "user", "content": "w " * words}])
    headers = {**auth(), "x-request-id": out.request_id}
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status == 200
            out.body = await resp.content.readuntil(b"\n\n")
            out.started.set()
            async for chunk in resp.content.iter_any():
                out.body += chunk
    except aiohttp.ClientError:
        out.cut = True
    finally:
        out.ended_at = time.monotonic()
        out.started.set()


async def refused(url: str) -> bool:
    """A fresh connection to the gateway fails (so must any readiness probe)."""
    try:
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/readyz") as resp:
            return resp.status != 200
    except aiohttp.ClientConnectionError:
        return True


async def sigterm_during_streams(gateway: Gateway, words: int) -> tuple[list[Stream], float, float]:
    """Starts the streams and sends SIGTERM once each has its first event; returns the
    streams (once ended), when SIGTERM was sent, and how soon readiness failed after it."""
    streams = [Stream(f"draining-{i}") for i in range(STREAMS)]
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(run_stream(session, gateway.url, s, words)) for s in streams]
        for s in streams:
            await asyncio.wait_for(s.started.wait(), 10)
        assert not any(s.cut or s.done for s in streams)
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        not_ready_after = await wait_for_refusal(gateway.url)
        # A new request is not taken either, while the streams go on.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.post(f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth()),
            ):
                pass
        assert not any(s.cut or s.done for s in streams)
        await asyncio.gather(*tasks)
    return streams, signalled, not_ready_after - signalled


async def wait_for_refusal(url: str) -> float:
    started = time.monotonic()
    while not await refused(url):
        assert time.monotonic() - started < 2, "still ready 2 s after SIGTERM"
        await asyncio.sleep(0.01)
    return time.monotonic()


async def test_row_21_sigterm_lets_in_flight_streams_finish_and_exits_0(
    start_process: StartProcess, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(delay=EVENT_DELAY_S)  # 10 events: about 1 s
    gateway = await start_process(10.0)

    streams, _, not_ready_s = await sigterm_during_streams(gateway, words=6)
    exit_code = await asyncio.to_thread(gateway.process.wait, 20)

    assert not_ready_s < SLACK  # at once: the listening socket is closed
    assert all(s.done and not s.cut for s in streams), [s.body[-60:] for s in streams]
    assert exit_code == 0
    assert upstream.state.completed_streams == STREAMS
    audits = gateway.audits()
    assert sorted(a["request_id"] for a in audits) == [s.request_id for s in streams]
    assert {(a["status"], a["outcome"]) for a in audits} == {(200, "ok")}
    assert gateway.complaints() == []


async def test_row_21_streams_longer_than_the_drain_deadline_end_at_it(
    start_process: StartProcess, upstream: RunningUpstream
) -> None:
    upstream.state.default = Behavior(delay=EVENT_DELAY_S)  # 34 events: about 3.4 s
    drain_s = 0.5
    gateway = await start_process(drain_s)

    streams, signalled, not_ready_s = await sigterm_during_streams(gateway, words=30)
    exit_code = await asyncio.to_thread(gateway.process.wait, 20)
    cut_after = [s.ended_at - signalled for s in streams]

    assert not_ready_s < SLACK
    assert exit_code == 0
    # Ended at the drain deadline, not before it and not at twice it, with an error event
    # that says why, never with a fake [DONE].
    assert all(not s.done for s in streams)
    assert all(b'"code":"gateway_shutdown"' in s.body for s in streams), streams[0].body[-200:]
    assert min(cut_after) >= drain_s - 0.05, cut_after
    assert max(cut_after) < drain_s + SLACK, cut_after
    # The upstream calls were cut with them: no token spent for a stream nobody gets.
    await wait_for(lambda: len(upstream.state.disconnected) == STREAMS, 2.0)
    assert sorted(upstream.state.disconnected) == [s.request_id for s in streams]
    # One audit line each, saying the gateway ended it (neither the client nor the upstream).
    audits = gateway.audits()
    assert sorted(a["request_id"] for a in audits) == [s.request_id for s in streams]
    assert {(a["status"], a["outcome"]) for a in audits} == {(200, "gateway_shutdown")}
    assert [
        line for line in gateway.complaints() if "streams_ended_at_drain_deadline" not in line
    ] == []
