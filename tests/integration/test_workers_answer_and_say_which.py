"""`serve --workers 2`: two processes answer on one port, and every answer says which one
it came from, in `x-gateway-worker` and in the access line of its request (`worker`)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RedisProcess, RunningUpstream
from tests.integration.workers import WORKERS, chat, fresh_connections, start_workers

# New connections are spread by a hash of their addresses: 64 all landing on one of two
# workers would happen once in 2**63 runs.
MOST = 64


async def test_both_workers_answer_and_name_themselves(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    gateway = start_workers(tmp_path, upstream.url, redis_server.url)
    try:
        answered: dict[str, str] = {}
        async with fresh_connections() as session:
            for i in range(MOST):
                answer = await chat(session, gateway, f"which-{i}")
                assert answer.status == 200
                answered[f"which-{i}"] = answer.worker
                if len(set(answered.values())) == WORKERS:
                    break
        pids = gateway.worker_pids()
    finally:
        exit_code = gateway.stop()

    assert set(answered.values()) == {"1", "2"}
    assert len(set(pids.values())) == WORKERS  # two processes...
    assert gateway.pid not in pids.values()  # ...neither of them the parent
    access = {
        r["request_id"]: r["worker"]
        for r in gateway.records("request")
        if r["request_id"].startswith("which-")
    }
    assert access == answered
    assert exit_code == 0
