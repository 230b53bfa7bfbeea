"""SIGTERM with streams in flight: the gateway stops accepting connections at once, lets
the in-flight streams finish (within server.shutdown_timeout), writes their audit lines
and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
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
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_drains_in_flight_streams_and_exits_cleanly(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    upstream.state.default = Behavior(delay=0.2)  # ten events: about two seconds a stream
    port = free_port()
    raw = config_dict(upstream.url)
    raw["server"].update(port=port, shutdown_timeout=10)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        async with aiohttp.ClientSession() as session:

            async def stream(i: int) -> bytes:
                body = chat_body(
                    stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}]
                )
                headers = {**auth(), "x-request-id": f"draining-{i}"}
                async with session.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    assert resp.status == 200
                    return await resp.read()

            streams = [asyncio.create_task(stream(i)) for i in range(3)]
            await asyncio.sleep(0.5)
            gateway.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            refused = False
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/healthz"):
                    pass
            except aiohttp.ClientConnectionError:
                refused = True
            answers = await asyncio.gather(*streams)
        exit_code = gateway.wait(timeout=20)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()

    assert refused, "the gateway still accepted connections after SIGTERM"
    assert all(answer.endswith(b"data: [DONE]\n\n") for answer in answers)
    assert exit_code == 0
    audits = [
        record
        for record in (json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{")
        if record.get("event") == "audit"
    ]
    assert sorted(r["request_id"] for r in audits) == ["draining-0", "draining-1", "draining-2"]
    assert all(r["outcome"] == "ok" for r in audits)
