"""deploy/compose.yaml is valid against the Compose specification's JSON schema (the copy
check-jsonschema vendors and keeps current, `--builtin-schema vendor.compose-spec`), and the
validator does refuse broken copies: a misspelled service key, a wrong type, a top-level
key the specification does not have. No Docker engine runs here to `docker compose config`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import ROOT

COMPOSE = ROOT / "deploy" / "compose.yaml"
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    assert CHECK_JSONSCHEMA, "check-jsonschema is not installed in the venv (dev dependency)"
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_is_valid() -> None:
    result = validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("    command: [fake-upstream", "    comand: [fake-upstream", "'comand' was unexpected"),
        ("  stop_grace_period: 45s", "  stop_grace_period: [45s]", "stop_grace_period"),
        ("\nnetworks:\n  default:", "\nnetwork:\n  default:", "'network' does not match"),
    ],
    ids=["misspelled-key", "wrong-type", "unknown-top-level-key"],
)
def test_a_broken_copy_is_refused(old: str, new: str, complaint: str, tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))

    result = validate(broken)

    assert result.returncode != 0
    assert complaint in result.stdout, result.stdout
