"""A worker killed outright (SIGKILL) is replaced by the parent: only the requests that
worker held fail; the other worker's streams finish; every request sent after the death
is answered, the replacement, under the same worker id, answering some; the death is
logged with its signal."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from gateway.app import WORKER_HEADER
from gateway.testing.fake_upstream import Behavior
from tests.conftest import RedisProcess, RunningUpstream, auth, chat_body
from tests.integration.workers import chat, fresh_connections, start_workers, until

# Streams held on each worker when one is killed; new connections until both hold this many.
HELD, MOST_STREAMS = 2, 40
# Requests after the death until the replacement has answered one.
MOST_AFTER = 200
WORDS = " ".join(["word"] * 30)  # thirty events, 0.1 s apart: three seconds a stream


async def test_a_killed_worker_loses_only_its_requests_and_is_replaced(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    upstream.state.default = Behavior(delay=0.1)
    gateway = start_workers(tmp_path, upstream.url, redis_server.url)
    try:
        victim = gateway.worker_pids()["1"]
        async with fresh_connections() as session:
            held: dict[str, list[asyncio.Task[bytes]]] = {"1": [], "2": []}
            for i in range(MOST_STREAMS):
                if min(len(streams) for streams in held.values()) >= HELD:
                    break
                resp = await session.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=chat_body(stream=True, messages=[{"role": "user", "content": WORDS}]),
                    headers={**auth(), "x-request-id": f"held-{i}"},
                )
                assert resp.status == 200
                held[resp.headers[WORKER_HEADER]].append(asyncio.create_task(_rest(resp)))
            assert min(len(streams) for streams in held.values()) >= HELD

            os.kill(victim, signal.SIGKILL)
            await until(lambda: bool(gateway.records("worker_died")))
            after = []
            for i in range(MOST_AFTER):
                after.append(await chat(session, gateway, f"after-{i}"))
                if after[-1].worker == "1":
                    break
            killed = await asyncio.gather(*held["1"], return_exceptions=True)
            survived = await asyncio.gather(*held["2"], return_exceptions=True)
        alive = gateway.alive()
        replacement = gateway.worker_pids()["1"]
    finally:
        exit_code = gateway.stop()

    assert all(isinstance(outcome, aiohttp.ClientError) for outcome in killed)
    assert all(
        isinstance(outcome, bytes) and outcome.endswith(b"data: [DONE]\n\n") for outcome in survived
    )
    assert [a.status for a in after] == [200] * len(after)
    assert after[-1].worker == "1"  # the replacement: the killed one cannot answer
    assert alive
    assert replacement != victim
    [died] = gateway.records("worker_died")
    assert (died["worker"], died["pid"], died["signal"]) == ("1", victim, "SIGKILL")
    assert exit_code == 0


async def _rest(resp: aiohttp.ClientResponse) -> bytes:
    async with resp:
        return await resp.read()
