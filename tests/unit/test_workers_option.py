"""`serve --workers`: a count of 1 or more, or `auto` for the CPUs the process may use
(fewer under a container's CPU quota, cgroup v2 or v1); anything else is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.supervisor import _cgroup_cpu_quota, cpu_count, parse_workers


def test_a_count_is_taken_as_it_is() -> None:
    assert [parse_workers(text) for text in ("1", "2", "16")] == [1, 2, 16]


def test_auto_is_the_cpus_this_process_may_use() -> None:
    assert parse_workers("auto") == cpu_count()
    assert 1 <= cpu_count() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", ""])
def test_anything_else_is_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", "unused.yaml", "--workers", text])

    assert exited.value.code == 2
    assert "argument --workers: expected a number of processes (1 or more) or 'auto'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: a Kubernetes limit of 1500m
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "1\n"}, None),
        ({}, None),
    ],
)
def test_a_container_cpu_quota_is_read_from_its_cgroup(
    tmp_path: Path, files: dict[str, str], cpus: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert _cgroup_cpu_quota(tmp_path) == cpus
