"""`serve --workers 2` without `rate_limits.redis_url` refuses to start, saying why: each
worker would keep its own in-process limits, giving every team twice its limits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict, free_port
from tests.gateway_process import NO_UPSTREAM, ROOT


def test_two_workers_with_the_in_process_limiter_refuse_to_start(tmp_path: Path) -> None:
    raw = config_dict(NO_UPSTREAM)
    raw["server"]["port"] = free_port()
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 10}
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

    assert done.returncode == 2
    assert done.stdout == ""  # nothing started, nothing logged
    assert done.stderr.startswith(f"{path}: --workers 2 needs rate_limits.redis_url: ")
    assert "every team would get 2 times its limits" in done.stderr
