"""The README's quick start, as written: `llm-gateway demo` brings up the gateway on the
demo config, and the README's curl and `openai` SDK examples get their answers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.gateway_process import wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEMO_PORT = 8080
FAKE_UPSTREAM_PORT = 9100


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_quick_start_is_the_two_scripts() -> None:
    start = README.index("## Quick start")
    first_block = code_blocks("bash")[0]
    assert README.index(first_block) > start
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with socket.socket() as probe:
        in_use = probe.connect_ex(("127.0.0.1", FAKE_UPSTREAM_PORT)) == 0
    assert not in_use, f"port {FAKE_UPSTREAM_PORT} (the demo's fake upstream) is taken"
    port = free_port()
    output = tmp_path_factory.mktemp("demo") / "output.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_until_ready(process, port, output, seconds=20)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_readme_curl_examples_answer(demo: int) -> None:
    curls = [block for block in code_blocks("bash") if "curl" in block]
    assert curls, "the README has no curl example"
    script = curls[0].replace(f"127.0.0.1:{DEMO_PORT}", f"127.0.0.1:{demo}")

    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)

    assert out.returncode == 0, out.stderr
    assert '"content": "echo: Hello, gateway"' in out.stdout
    assert "data: [DONE]" in out.stdout
    assert '"content": " this"' in out.stdout


def test_readme_sdk_example_answers(demo: int) -> None:
    snippets = [block for block in code_blocks("python") if "from openai" in block]
    assert snippets, "the README has no openai SDK example"
    script = snippets[0].replace(f"127.0.0.1:{DEMO_PORT}", f"127.0.0.1:{demo}")

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["echo: Hello, gateway", "echo: Stream this"]
