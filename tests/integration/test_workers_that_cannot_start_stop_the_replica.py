"""A worker of the first generation whose app cannot start (here: its audit file cannot be
opened) stops the replica, exit code 1, instead of being restarted forever: what fails at
the first start fails at every restart."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import config_dict, free_port
from tests.gateway_process import NO_UPSTREAM
from tests.integration.workers import serve_workers_once


def test_workers_whose_app_cannot_start_end_the_parent_with_exit_code_1(
    tmp_path: Path,
) -> None:
    raw = config_dict(NO_UPSTREAM)
    raw["server"].update(port=free_port())
    raw["audit"] = {"path": str(tmp_path / "no-such-dir" / "audit")}
    raw["rate_limits"] = {"redis_url": "redis://127.0.0.1:9/0"}  # never reached
    done = serve_workers_once(tmp_path, raw)

    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    events = [r["event"] for r in records]
    assert done.returncode == 1
    assert events.count("worker_started") == 2  # none restarted
    assert events.count("worker_failed") == 2
    assert "worker_failed_to_start" in events
    assert "worker_died" not in events
    assert events[-1] == "workers_stopped"
