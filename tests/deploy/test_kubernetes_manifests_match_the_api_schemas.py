"""The Kubernetes base renders (`kubectl kustomize`) to objects that are valid against the
Kubernetes API's own JSON schemas, strictly (no unknown field), for the oldest and the
newest version kubernetes-validate ships that the base supports; the ServiceMonitor against
its CRD's schema (tests/deploy/schemas, an excerpt with its source noted). Broken copies of
the base are refused: by kustomize (a missing file), by the API schemas (an unknown field,
a wrong type), by the CRD schema (a misspelled field)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.kubernetes import RenderError, copy_base, render

# The oldest version the base is written for (policy/v1, autoscaling/v2 and the
# kubernetes.io/metadata.name namespace label are all older), and the newest one here.
VERSIONS = ["1.27", kubernetes_validate.latest_version()]
SERVICE_MONITOR_SCHEMA = Path(__file__).parent / "schemas" / "servicemonitor-v1.json"
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceMonitor",
}


def schema_problems(doc: dict[str, Any], tmp_path: Path) -> list[str]:
    """What the schemas refuse in one object, for every version."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        assert CHECK_JSONSCHEMA, "check-jsonschema is not installed in the venv"
        instance = tmp_path / f"{doc['metadata']['name']}.json"
        instance.write_text(json.dumps(doc))
        out = subprocess.run(
            [CHECK_JSONSCHEMA, "--schemafile", str(SERVICE_MONITOR_SCHEMA), str(instance)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [] if out.returncode == 0 else [f"{name}: {out.stdout}"]
    problems = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{name} ({version}): {path}: {error.message}")
    return problems


def all_problems(docs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    return [problem for doc in docs for problem in schema_problems(doc, tmp_path)]


def test_the_base_renders_every_kind() -> None:
    assert {doc["kind"] for doc in render()} == KINDS


def test_every_object_is_valid(tmp_path: Path) -> None:
    assert all_problems(render(), tmp_path) == []


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        (
            "deployment.yaml",
            "          resources:\n",
            "          resource:\n",
            "'resource' was unexpected",
        ),
        ("deployment.yaml", "revisionHistoryLimit: 5", "revisionHistoryLimit: five", "five"),
        ("hpa.yaml", "  minReplicas: 2", "  minReplica: 2", "'minReplica' was unexpected"),
        ("networkpolicy.yaml", "          protocol: UDP", "          protocol: [UDP]", "UDP"),
        ("servicemonitor.yaml", "  endpoints:", "  endpoint:", "'endpoint' was unexpected"),
        ("servicemonitor.yaml", "interval: 15s", "interval: 15 seconds", "15 seconds"),
    ],
    ids=[
        "deployment-unknown-field",
        "deployment-wrong-type",
        "hpa-misspelled-field",
        "networkpolicy-wrong-type",
        "servicemonitor-misspelled-field",
        "servicemonitor-bad-duration",
    ],
)
def test_a_broken_copy_is_refused(
    file: str, old: str, new: str, complaint: str, tmp_path: Path
) -> None:
    base = copy_base(tmp_path / "base")
    text = (base / file).read_text()
    assert old in text
    (base / file).write_text(text.replace(old, new, 1))

    kind = yaml.safe_load((base / file).read_text())["kind"]
    problems = all_problems([doc for doc in render(base) if doc["kind"] == kind], tmp_path)

    assert any(complaint in problem for problem in problems), problems


def test_kustomize_refuses_a_missing_resource(tmp_path: Path) -> None:
    base = copy_base(tmp_path / "base")
    (base / "pdb.yaml").unlink()

    with pytest.raises(RenderError, match=r"pdb\.yaml"):
        render(base)
