"""`serve --workers 2` without `rate_limits.redis_url` refuses to start, saying why: each
worker would keep its own in-process limits, giving every team twice its limits."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import config_dict, free_port
from tests.gateway_process import NO_UPSTREAM
from tests.integration.workers import serve_workers_once


def test_two_workers_with_the_in_process_limiter_refuse_to_start(tmp_path: Path) -> None:
    raw = config_dict(NO_UPSTREAM)
    raw["server"]["port"] = free_port()
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 10}
    done = serve_workers_once(tmp_path, raw)

    assert done.returncode == 2
    assert done.stdout == ""  # nothing started, nothing logged
    assert done.stderr.startswith(
        f"{tmp_path / 'gateway.yaml'}: --workers 2 needs rate_limits.redis_url: "
    )
    assert "every team would get 2 times its limits" in done.stderr
