"""SIGHUP (a reload: here of an unchanged file), SIGUSR1 (the audit file reopened), SIGUSR2
and the other signals whose default action would end the process do not end it: streams in
flight finish with `[DONE]`, the process keeps serving, and every request is audited."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    RunningUpstream,
    auth,
    chat_body,
    config_dict,
    free_port,
)
from tests.gateway_process import ROOT, gateway_process, wait_until_ready

SIGNALS = {
    "SIGHUP": signal.SIGHUP,
    "SIGUSR1": signal.SIGUSR1,
    "SIGUSR2": signal.SIGUSR2,
    "SIGALRM": signal.SIGALRM,
    "SIGRTMIN+1": signal.SIGRTMIN + 1,
}


async def test_signals_neither_stop_the_gateway_nor_cut_its_streams(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    upstream.state.default = Behavior(delay=0.05)  # ten events: about half a second
    raw = config_dict(upstream.url)
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    with gateway_process(tmp_path, raw=raw) as gateway:
        async with aiohttp.ClientSession() as session:

            async def stream(request_id: str) -> bytes:
                body = chat_body(stream=True, messages=[{"role": "user", "content": "a b c d"}])
                async with session.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=body,
                    headers={**auth(), "x-request-id": request_id},
                ) as resp:
                    assert resp.status == 200
                    return await resp.read()

            for name, number in SIGNALS.items():
                streams = [asyncio.create_task(stream(f"signal-{number}-{i}")) for i in range(2)]
                await asyncio.sleep(0.2)
                gateway.process.send_signal(number)
                answers = await asyncio.gather(*streams)
                assert all(a.endswith(b"data: [DONE]\n\n") for a in answers), name
                assert gateway.alive(), f"{name} ended the gateway"
        exit_code = gateway.stop()
        audit_lines = (tmp_path / "audit.jsonl").read_text().splitlines()
        audited = {json.loads(line)["request_id"] for line in audit_lines}
        reopened = gateway.records("audit_reopened")
        reload_lines = gateway.records("config_reload_requested")
        unchanged = gateway.records("config_unchanged")
        ignored = [r["signal"] for r in gateway.records("signal_ignored")]

    assert exit_code == 0
    assert audited == {f"signal-{number}-{i}" for number in SIGNALS.values() for i in range(2)}
    assert len(audit_lines) == len(audited)
    assert len(reopened) == 1
    assert [r["trigger"] for r in reload_lines] == ["SIGHUP"]
    assert [r["generation"] for r in unchanged] == [1]
    assert ignored == [name for name in SIGNALS if name not in ("SIGHUP", "SIGUSR1")]


def test_a_rotation_signal_while_the_gateway_starts_does_not_end_it(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    # logrotate signals whatever process the pid file names, possibly one still starting.
    config = tmp_path / "gateway.yaml"
    raw = config_dict(upstream.url)
    raw["server"]["port"] = free_port()
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    config.write_text(yaml.safe_dump(raw))
    pid_file, log = tmp_path / "gateway.pid", tmp_path / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
                *("--pid-file", str(pid_file)),
            ],
            cwd=ROOT,
            env={**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        # As soon as the file names it: long before its handlers are in place.
        for number in (signal.SIGUSR1, signal.SIGHUP):
            process.send_signal(number)
        wait_until_ready(process, raw["server"]["port"], log)
        assert process.poll() is None
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
