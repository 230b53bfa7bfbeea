"""With `serve --workers 2`, a reload (SIGHUP to the parent) puts the new file in force in
every worker, and a worker started later (a replacement for one that died) serves the
reloaded file too, not the one the replica started with."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import yaml

from gateway.stages.auth import hash_key
from tests.conftest import RedisProcess, RunningUpstream, auth
from tests.integration.workers import Answer, chat, fresh_connections, start_workers, until

NEW_KEY = "gw-workers-reload-new-team-key-0001"
# New connections sent until a given worker has answered one (the kernel hashes them).
MOST_TRIES = 200


async def test_every_worker_and_every_replacement_serves_the_reloaded_file(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    gateway = start_workers(tmp_path, upstream.url, redis_server.url)
    try:
        raw = yaml.safe_load(gateway.config.read_text())
        raw["teams"]["new"] = {"key_hashes": [hash_key(NEW_KEY)], "models": ["*"]}
        gateway.config.write_text(yaml.safe_dump(raw))
        gateway.process.send_signal(signal.SIGHUP)
        await until(lambda: len(gateway.records("config_reloaded")) == 2)
        async with fresh_connections() as session:
            before = {"1": [], "2": []}  # type: dict[str, list[Answer]]
            for i in range(MOST_TRIES):
                answer = await chat(session, gateway, f"new-key-{i}", headers=auth(NEW_KEY))
                before[answer.worker].append(answer)
                if all(before.values()):
                    break

            victim = gateway.worker_pids()["1"]
            os.kill(victim, signal.SIGKILL)
            await until(lambda: len(gateway.records("worker_started")) == 3)
            after: list[Answer] = []
            for i in range(MOST_TRIES):
                after.append(await chat(session, gateway, f"after-{i}", headers=auth(NEW_KEY)))
                if after[-1].worker == "1":
                    break
        replacement = gateway.worker_pids()["1"]
    finally:
        exit_code = gateway.stop()

    assert sorted(r["worker"] for r in gateway.records("config_reloaded")) == ["1", "2"]
    assert all(before.values()), "a worker never answered"
    assert {a.status for answers in before.values() for a in answers} == {200}
    assert replacement != victim
    assert after[-1].worker == "1"  # the replacement answered the new key
    assert [a.status for a in after] == [200] * len(after)
    assert exit_code == 0
