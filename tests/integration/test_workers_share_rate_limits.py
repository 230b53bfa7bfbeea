"""Two workers hold a team to its limits exactly, through Redis: 40 requests at once
against 10 requests per minute, spread over both workers, admit exactly 10 (each worker
counting on its own would admit up to 10 each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import RedisProcess, RunningUpstream
from tests.integration.workers import chat, fresh_connections, start_workers

LIMIT, SENT = 10, 40


async def test_forty_requests_at_once_over_two_workers_admit_exactly_ten(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    gateway = start_workers(
        tmp_path, upstream.url, redis_server.url, limits={"requests_per_minute": LIMIT}
    )
    try:
        async with fresh_connections() as session:
            answers = await asyncio.gather(
                *(chat(session, gateway, f"burst-{i}") for i in range(SENT))
            )
    finally:
        gateway.stop()

    statuses = [a.status for a in answers]
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == SENT - LIMIT
    assert {a.worker for a in answers} == {"1", "2"}  # both counted, in one place
    assert len(upstream.state.requests) == LIMIT
