"""`serve` writes its pid to the pid file (removed when it exits) and `llm-gateway reload`
signals the process it names: the gateway reads its file again. A pid file that names no
gateway (gone, or another program that reused the pid) is refused, and that program is
not signalled."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.stages.auth import hash_key
from tests.conftest import RunningUpstream, auth, chat_body, config_dict
from tests.gateway_process import ROOT, gateway_process, raw_request

NEW_KEY = "gw-reload-command-new-team-key-0001"


def reload_command(pid_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "reload", "--pid-file", str(pid_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def readyz(port: int) -> dict[str, Any]:
    answer: dict[str, Any] = raw_request(port, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").json()
    return answer


async def test_reload_signals_the_gateway_its_pid_file_names(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    raw = config_dict(upstream.url)
    with gateway_process(tmp_path, upstream.url, raw=raw) as gateway:
        assert gateway.pid_file.read_text() == f"{gateway.pid}\n"
        raw["teams"]["new"] = {"key_hashes": [hash_key(NEW_KEY)], "models": ["*"]}
        gateway.config.write_text(yaml.safe_dump(raw))

        done = reload_command(gateway.pid_file)

        assert done.returncode == 0, done.stderr
        assert f"sent SIGHUP to process {gateway.pid}" in done.stdout
        for _ in range(1000):  # until the reload is in force (20 s at most)
            if readyz(gateway.port)["config_generation"] == 2:
                break
            await asyncio.sleep(0.02)
        assert readyz(gateway.port)["config_generation"] == 2
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth(NEW_KEY)
            ) as answer,
        ):
            assert answer.status == 200
        assert gateway.stop() == 0
    assert not gateway.pid_file.exists()  # removed on exit

    gone = reload_command(gateway.pid_file)
    assert (gone.returncode, gone.stdout) == (1, "")
    assert f"no pid file at {gateway.pid_file}" in gone.stderr


def test_a_pid_file_naming_another_program_is_refused(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "stale.pid"
        pid_file.write_text(f"{other.pid}\n")

        done = reload_command(pid_file)

        assert done.returncode == 1
        assert f"process {other.pid}" in done.stderr
        assert "not a running llm-gateway" in done.stderr
        assert other.poll() is None  # not signalled: SIGHUP would have ended it
    finally:
        other.kill()
        other.wait()
