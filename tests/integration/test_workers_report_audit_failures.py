"""With `serve --workers 2` on a disk that fills up (a real 64 KB tmpfs), a scrape of any
worker reports the audit failures of both: `llm_gateway_audit_write_failures_total{worker}`
(kept in the workers' count files) is exactly the number of each worker's requests whose
lines are not in the file, and `llm_gateway_audit_available{worker}` (a gauge each worker
publishes) is 0 for both once each has lost its last line."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisProcess, RunningUpstream
from tests.gateway_process import GatewayProcess
from tests.integration.workers import Answer, chat, fresh_connections, start_workers
from tests.small_filesystem import SmallFilesystem

REQUESTS = 30


async def by_worker(gateway: GatewayProcess, name: str) -> dict[str, float]:
    """One scrape: `name`'s samples summed by worker."""
    async with fresh_connections() as session, session.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    summed: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                worker = sample.labels["worker"]
                summed[worker] = summed.get(worker, 0.0) + sample.value
    return summed


async def test_a_scrape_reports_each_workers_lost_lines(
    upstream: RunningUpstream,
    redis_server: RedisProcess,
    small_filesystem: SmallFilesystem,
    tmp_path: Path,
) -> None:
    audit = small_filesystem.directory / "audit.jsonl"
    gateway = start_workers(tmp_path, upstream.url, redis_server.url, audit={"path": str(audit)})
    try:
        small_filesystem.fill()
        async with fresh_connections() as session:
            answered: dict[str, Answer] = {}
            burst = [chat(session, gateway, f"r{i}") for i in range(REQUESTS)]
            for number, answer in enumerate(await asyncio.gather(*burst)):
                answered[f"r{number}"] = answer
            # The burst used up the room left in the file's last page: from here every line
            # fails, and each worker's last one is one of these.
            tail: set[str] = set()
            while tail != {"1", "2"}:
                assert len(answered) < REQUESTS + 50, "one worker answered every request"
                request_id = f"r{len(answered)}"
                answered[request_id] = await chat(session, gateway, request_id)
                tail.add(answered[request_id].worker)
        written = {json.loads(line)["request_id"] for line in audit.read_text().splitlines()}
        lost = Counter(a.worker for rid, a in answered.items() if rid not in written)
        expected = {worker: float(count) for worker, count in lost.items()}
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the sibling's gauge is published once a second
            failures = await by_worker(gateway, "llm_gateway_audit_write_failures_total")
            available = await by_worker(gateway, "llm_gateway_audit_available")
            if failures == expected and available == {"1": 0.0, "2": 0.0}:
                break
            assert asyncio.get_running_loop().time() < deadline, (failures, available, expected)
            await asyncio.sleep(0.1)
    finally:
        assert gateway.stop() == 0

    assert all(answer.status == 200 for answer in answered.values())  # continue: served
    assert sum(lost.values()) > len(answered) - 8  # a few lines fit in the last page, no more
