"""`llm-gateway` installed, not checked out: the wheel `pip wheel . --no-deps` builds is
installed into a fresh virtualenv outside the repository, and that venv's `llm-gateway demo`
answers the README's quick-start curl examples. The demo config and the shipped policies
reach it only as package data (gateway/data/), so a wheel without them fails here.

How it is built and installed, fast and offline: tests/deploy/installed.py."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import DEMO_UPSTREAM_KEY_ENV
from tests.conftest import free_port
from tests.deploy.installed import clean_env, run
from tests.gateway_process import wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
README_DEMO_PORT = 8080

# The first run may fill the wheelhouse from PyPI (pip's cache makes it quick).
pytestmark = pytest.mark.timeout(240)


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
        wait_until_ready(process, port, output)
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
