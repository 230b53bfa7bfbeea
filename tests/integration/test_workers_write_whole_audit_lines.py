"""The workers of `serve --workers 2` append to one audit file at once, and every line in it
is one whole record: each is one write(2) to a descriptor opened with O_APPEND, which the
kernel places at the end of the file in one piece. Here with records of about 10 KB (a
team with many long policy names), larger than a page and than stdio's 8 KB buffer, from
many requests in flight on both workers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from tests.conftest import RedisProcess, RunningUpstream, config_dict
from tests.gateway_process import start_gateway_process
from tests.integration.workers import WORKERS, chat, fresh_connections

REQUESTS = 400
CONCURRENCY = 32
# Policy names of 120 characters (of the 128 a name may have), none of them doing anything.
POLICIES = [f"{i:03d}-" + "p" * 116 for i in range(80)]


async def test_concurrent_lines_of_both_workers_never_interleave(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    raw = config_dict(upstream.url, shutdown_timeout=10)
    raw["rate_limits"] = {"redis_url": redis_server.url, "redis_timeout_ms": 5000}
    raw["audit"] = {"path": str(audit)}
    raw["policies"] = {
        name: {"description": "a long name, to make long audit lines"} for name in POLICIES
    }
    raw["teams"]["team-a"]["policies"] = POLICIES
    gateway = start_gateway_process(tmp_path, raw=raw, workers=WORKERS)
    slots = asyncio.Semaphore(CONCURRENCY)
    try:
        async with fresh_connections() as session:

            async def one(request_id: str) -> str:
                async with slots:
                    answer = await chat(session, gateway, request_id)
                assert answer.status == 200, answer.body
                return answer.worker

            workers = await asyncio.gather(*(one(f"r{i}") for i in range(REQUESTS)))
    finally:
        assert gateway.stop() == 0

    data = audit.read_bytes()
    lines = data.split(b"\n")
    assert lines.pop() == b""  # the file ends with a newline
    records = [json.loads(line) for line in lines]  # each line whole JSON
    assert Counter(r["request_id"] for r in records) == Counter(f"r{i}" for i in range(REQUESTS))
    assert all(r["policies"] == POLICIES for r in records)
    assert min(len(line) for line in lines) > 10_000
    assert set(workers) == {"1", "2"}
