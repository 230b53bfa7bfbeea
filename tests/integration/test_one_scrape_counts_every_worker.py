"""One scrape of `/metrics`, whichever worker answers it, counts every request any worker
answered, by the worker that answered it, a worker killed since included (its counts are
in its files, and its replacement carries them on); the restart is counted too."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisProcess, RunningUpstream
from tests.integration.workers import (
    chat,
    fresh_connections,
    requests_total,
    start_workers,
    until,
)

BEFORE, UNAUTHENTICATED, AFTER = 20, 4, 10


async def test_one_scrape_counts_the_requests_of_every_worker_a_killed_one_included(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    gateway = start_workers(tmp_path, upstream.url, redis_server.url)
    try:
        answered: Counter[str] = Counter()
        async with fresh_connections() as session:
            for i in range(BEFORE):
                answer = await chat(session, gateway, f"before-{i}")
                assert answer.status == 200
                answered[answer.worker] += 1
            for i in range(UNAUTHENTICATED):
                answer = await chat(session, gateway, f"no-key-{i}", headers={})
                assert answer.status == 401
                answered[answer.worker] += 1
            # Counted before each answer was sent: all in the files before the kill.
            assert await requests_total(gateway) == answered
            victim = max(answered, key=lambda worker: answered[worker])  # it answered some
            os.kill(gateway.worker_pids()[victim], signal.SIGKILL)
            await until(lambda: len(gateway.records("listening")) == 3)  # the replacement
            for i in range(AFTER):
                answer = await chat(session, gateway, f"after-{i}")
                assert answer.status == 200
                answered[answer.worker] += 1
            async with session.get(f"{gateway.url}/metrics") as resp:
                exposition = await resp.text()
    finally:
        gateway.stop()

    by_worker: Counter[str] = Counter()
    restarts: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "llm_gateway_requests_total":
                by_worker[sample.labels["worker"]] += int(sample.value)
            elif sample.name == "llm_gateway_worker_restarts_total":
                restarts[sample.labels["worker"]] = sample.value
    assert sum(by_worker.values()) == BEFORE + UNAUTHENTICATED + AFTER
    assert by_worker == answered
    assert restarts == {victim: 1.0, ({"1", "2"} - {victim}).pop(): 0.0}
