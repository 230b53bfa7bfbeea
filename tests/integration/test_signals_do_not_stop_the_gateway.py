"""SIGHUP (a reload: here of an unchanged file), SIGUSR1 (the audit file reopened), SIGUSR2
and the other signals whose default action would end the process do not end it: streams in
flight finish with `[DONE]`, the process keeps serving, and every request is audited."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import RunningUpstream, auth, chat_body, config_dict
from tests.gateway_process import gateway_process

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
