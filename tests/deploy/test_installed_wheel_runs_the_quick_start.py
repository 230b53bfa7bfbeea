"""`llm-gateway` installed, not checked out: the wheel `pip wheel . --no-deps` builds is
installed into a fresh virtualenv outside the repository, and that venv's `llm-gateway demo`
answers the README's quick-start curl examples. The demo config and the shipped policies
reach it only as package data (gateway/data/), so a wheel without them fails here.

Fast and offline after the first run: the wheel is built without build isolation (the
.venv's setuptools), and the dependencies come from a wheelhouse under .venv made once per
set of versions (those installed in .venv, so pip takes them from its cache); the fresh venv
installs with --no-index."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from gateway.cli import DEMO_UPSTREAM_KEY_ENV
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
README_DEMO_PORT = 8080
WHEELHOUSES = Path(sys.prefix) / "wheelhouse"
# Not part of the build: the checkout's environment, caches and earlier build output (a
# stale build/lib would put deleted modules into the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench-results"
)

# The first run may fill the wheelhouse from PyPI (pip's cache makes it quick).
pytestmark = pytest.mark.timeout(240)


def run(
    command: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    out = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, f"{command}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def build_wheel(work: Path) -> Path:
    """`pip wheel . --no-deps` in a copy of the checkout (symlinks kept, as git keeps them)."""
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCES)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            work / "dist",
        ],
        cwd=source,
    )
    [wheel] = (work / "dist").glob("llm_gateway-*.whl")
    return wheel


def dependency_wheelhouse(wheel: Path, work: Path) -> Path:
    """Wheels of the project's dependencies at the versions installed in .venv."""
    pins = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "llm-gateway"
    )
    requires = sorted(metadata.requires("llm-gateway") or [])
    key = hashlib.sha256("\n".join(pins + requires).encode()).hexdigest()[:16]
    house = WHEELHOUSES / key
    if not (house / ".complete").exists():
        shutil.rmtree(WHEELHOUSES, ignore_errors=True)  # houses of older versions
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                wheel,
                "--wheel-dir",
                house,
                "--constraint",
                constraints,
            ]
        )
        for own in house.glob("llm_gateway-*.whl"):
            own.unlink()
        (house / ".complete").touch()
    return house


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh venv (outside the checkout) with the wheel installed."""
    work = tmp_path_factory.mktemp("installed")
    assert not work.is_relative_to(ROOT)
    wheel = build_wheel(work)
    house = dependency_wheelhouse(wheel, work)
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "--no-index",
            "--find-links",
            house,
            wheel,
        ]
    )
    return venv / "bin"


def clean_env() -> dict[str, str]:
    """The environment without anything that could lead Python back to the checkout."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONUNBUFFERED": "1"}


# A key of this run's own: the demo's fake upstream requires it, so an answer cannot come
# from another fake upstream left on the default port 9100 (`--upstream-port` must work).
UPSTREAM_KEY = f"wheel-test-{os.getpid()}"


@pytest.fixture(scope="module")
def demo(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    work = tmp_path_factory.mktemp("demo")
    port, upstream_port = free_port(), free_port()
    output = work / "output.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                installed / "llm-gateway",
                "demo",
                "--port",
                str(port),
                "--upstream-port",
                str(upstream_port),
            ],
            cwd=work,
            env=clean_env() | {DEMO_UPSTREAM_KEY_ENV: UPSTREAM_KEY},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, output.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the installed demo was not ready in 30 s"
            time.sleep(0.1)
        assert f"fake upstream on 127.0.0.1:{upstream_port}" in output.read_text()
        yield port
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0, output.read_text()


def test_the_installed_package_is_not_the_checkout(installed: Path) -> None:
    where = run(
        [installed / "python", "-c", "import gateway.cli as c; print(c.__file__, c.DEMO_CONFIG)"],
        env=clean_env(),
        cwd=installed,
    ).split()
    for path in where:
        assert not Path(path).resolve().is_relative_to(ROOT), path
        assert Path(path).resolve().is_relative_to(installed.parent), path
    assert Path(where[1]).is_file()
    policies = Path(where[1]).parent.parent / "policies"
    shipped = sorted(p.name for p in (ROOT / "policies").glob("*.yaml"))
    assert sorted(p.name for p in policies.glob("*.yaml")) == shipped


def test_readme_curl_examples_answer_from_the_installed_demo(demo: int) -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    curls = [block for block in blocks if "curl" in block]
    assert curls, "the README has no curl example"
    script = curls[0].replace(f"127.0.0.1:{README_DEMO_PORT}", f"127.0.0.1:{demo}")
    assert f"127.0.0.1:{demo}" in script

    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)

    assert out.returncode == 0, out.stderr
    assert '"content": "echo: Hello, gateway"' in out.stdout
    assert '"content": " this"' in out.stdout
    assert "data: [DONE]" in out.stdout
