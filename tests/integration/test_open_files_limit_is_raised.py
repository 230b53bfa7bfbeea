"""At start-up `serve` raises its soft open-files limit (RLIMIT_NOFILE) to the hard limit,
which the soft default of 1024 is often far below, and logs both."""

from __future__ import annotations

import re
from pathlib import Path

from tests.gateway_process import gateway_process


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    with gateway_process(tmp_path, open_files=(1024, 4096)) as gateway:
        limits = Path(f"/proc/{gateway.pid}/limits").read_text()
        logged = gateway.records("open_files_limit")

    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert match is not None
    assert (int(match[1]), int(match[2])) == (4096, 4096)
    assert [(r["soft_before"], r["soft"], r["hard"]) for r in logged] == [(1024, 4096, 4096)]
