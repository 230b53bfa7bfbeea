"""llm-gateway installed from its wheel into a fresh virtualenv outside the checkout, as a
user (or the image's build stage) installs it.

Fast and offline after the first run: the wheel is built without build isolation (the
.venv's setuptools), and the dependencies come from a wheelhouse under .venv made once per
set of versions (those installed in .venv, so pip takes them from its cache); the fresh
venv installs with --no-index."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSES = Path(sys.prefix) / "wheelhouse"
# Not part of the build: the checkout's environment, caches and earlier build output (a
# stale build/lib would put deleted modules into the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "bench-results",
    ".peers",
)


def run(
    command: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    out = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, f"{command}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def pip(*arguments: str | Path, cwd: Path | None = None) -> str:
    return run([sys.executable, "-m", "pip", *arguments], cwd=cwd)


def build_wheel(work: Path) -> Path:
    """`pip wheel . --no-deps` in a copy of the checkout (symlinks kept, as git keeps them)."""
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCES)
    pip("wheel", ".", "--no-deps", "--no-build-isolation", "--wheel-dir", work / "dist", cwd=source)
    [wheel] = (work / "dist").glob("llm_gateway-*.whl")
    return wheel


def dependency_wheelhouse(wheel: Path, work: Path, python: Path) -> Path:
    """Wheels of the project's dependencies for `python` (environment markers differ
    between patch versions: redis needs async-timeout below 3.11.3), at the versions
    installed in .venv."""
    pins = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "llm-gateway"
    )
    requires = sorted(metadata.requires("llm-gateway") or [])
    version = run([python, "-c", "import sys; print(sys.version)"])
    key = hashlib.sha256("\n".join([*pins, *requires, version]).encode()).hexdigest()[:16]
    house = WHEELHOUSES / key
    if not (house / ".complete").exists():
        shutil.rmtree(WHEELHOUSES, ignore_errors=True)  # houses of older versions
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        pip("--python", python, "wheel", wheel, "--wheel-dir", house, "--constraint", constraints)
        for own in house.glob("llm_gateway-*.whl"):
            own.unlink()
        (house / ".complete").touch()
    return house


def runs_for_everyone(path: Path) -> bool:
    """Whether any user can execute `path` (every directory on the way searchable)."""
    real = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (real, *real.parents))


def base_interpreter() -> Path:
    """The interpreter the venv is made from: this one, or, when another user cannot run
    it (e.g. pyenv's under /root), the system's of the same version, so that the image's
    unprivileged user can run the venv as in the image."""
    own = Path(sys.executable)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin")
    for candidate in (own, Path(system) if system else None):
        if candidate is not None and runs_for_everyone(candidate):
            return candidate
    return own


def install(work: Path) -> Path:
    """Builds the wheel and installs it into a new venv under `work`; returns its bin/."""
    assert not work.resolve().is_relative_to(ROOT)
    wheel = build_wheel(work)
    python = base_interpreter()
    house = dependency_wheelhouse(wheel, work, python)
    venv = work / "venv"
    run([python, "-m", "venv", "--without-pip", venv])
    pip("--python", venv / "bin" / "python", "install", "--no-index", "--find-links", house, wheel)
    return venv / "bin"


def clean_env() -> dict[str, str]:
    """The environment without anything that could lead Python back to the checkout."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONUNBUFFERED": "1"}
