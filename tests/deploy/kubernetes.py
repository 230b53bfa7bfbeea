"""The Kubernetes base (deploy/kubernetes) rendered as `kubectl apply -k` would send it:
`kubectl kustomize` (the machine's kubectl, or Debian's kubernetes-client, which
scripts/test.sh installs), parsed into one dict per object."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.dockerfile import ROOT

BASE = ROOT / "deploy" / "kubernetes"


class RenderError(Exception):
    pass


def render(base: Path = BASE) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (scripts/test.sh installs kubernetes-client)"
    out = subprocess.run(
        [kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RenderError(out.stderr)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in docs if doc["kind"] == kind]
    return found


# A generated name: the generator's name and a hash of the content.
HASHED = re.compile(r"^(?P<base>.+)-[a-z0-9]{10}$")


def generator_name(name: str) -> str:
    match = HASHED.match(name)
    return match["base"] if match else name


def config_maps(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rendered ConfigMaps by their generator's name (the name without its hash)."""
    return {
        generator_name(doc["metadata"]["name"]): doc for doc in docs if doc["kind"] == "ConfigMap"
    }


def copy_base(destination: Path) -> Path:
    """A copy of the base to break, e.g. to show a validator refusing it."""
    shutil.copytree(BASE, destination)
    return destination
