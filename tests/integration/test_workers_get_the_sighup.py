"""SIGHUP to the parent of `serve --workers 2` reaches every worker, which reacts as a
single process does (reads the configuration again: unchanged here, `config_unchanged`);
no worker stops, the parent keeps serving."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import RedisProcess, RunningUpstream
from tests.integration.workers import chat, fresh_connections, start_workers, until


async def test_sighup_reaches_every_worker_and_stops_none(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    gateway = start_workers(tmp_path, upstream.url, redis_server.url)
    try:
        gateway.process.send_signal(signal.SIGHUP)
        await until(lambda: len(gateway.records("config_unchanged")) == 2)
        async with fresh_connections() as session:
            answer = await chat(session, gateway, "after-sighup")
        alive = gateway.alive()
    finally:
        exit_code = gateway.stop()

    assert sorted(r["worker"] for r in gateway.records("config_unchanged")) == ["1", "2"]
    [forwarded] = gateway.records("signal_forwarded")[:1]
    assert (forwarded["signal"], forwarded["workers"]) == ("SIGHUP", ["1", "2"])
    assert answer.status == 200
    assert alive
    assert len(gateway.records("worker_started")) == 2  # none restarted
    assert exit_code == 0
