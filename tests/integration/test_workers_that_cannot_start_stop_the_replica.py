"""A worker of the first generation whose app cannot start (here: its audit file cannot be
opened) stops the replica, exit code 1, instead of being restarted forever: what fails at
the first start fails at every restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict, free_port
from tests.gateway_process import NO_UPSTREAM, ROOT


def test_workers_whose_app_cannot_start_end_the_parent_with_exit_code_1(
    tmp_path: Path,
) -> None:
    raw = config_dict(NO_UPSTREAM)
    raw["server"].update(port=free_port(), audit_path=str(tmp_path / "no-such-dir" / "audit"))
    raw["rate_limits"] = {"redis_url": "redis://127.0.0.1:9/0"}  # never reached
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY},
        capture_output=True,
        text=True,
        timeout=30,
    )

    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    events = [r["event"] for r in records]
    assert done.returncode == 1
    assert events.count("worker_started") == 2  # none restarted
    assert events.count("worker_failed") == 2
    assert "worker_failed_to_start" in events
    assert "worker_died" not in events
    assert events[-1] == "workers_stopped"
