"""logrotate's way with the audit file, on a gateway process under traffic: the file is
renamed while requests run, then SIGUSR1; the gateway opens the path again (a new file),
and every request's audit line is in exactly one of the two files, whole. Lines written
between the rename and the signal are in the renamed file; after the signal, in the new
one. With `serve --workers 2` the parent forwards SIGUSR1 to each worker, which reopens
its own descriptor of the shared file."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

from tests.conftest import RedisProcess, RunningUpstream, config_dict
from tests.gateway_process import GatewayProcess, start_gateway_process
from tests.integration.audit_trail import request_ids, traffic
from tests.integration.workers import start_workers, until


async def rotate_under_traffic(gateway: GatewayProcess, audit: Path, reopens: int) -> None:
    rotated = audit.with_name("audit.jsonl.1")
    before = await traffic(gateway, "before", 40)
    during = asyncio.create_task(traffic(gateway, "during", 80))
    await asyncio.sleep(0.2)
    audit.rename(rotated)
    await asyncio.sleep(0.1)  # lines keep going to the renamed file until the signal
    gateway.process.send_signal(signal.SIGUSR1)
    answered_during = await during
    await until(lambda: len(gateway.records("audit_reopened")) == reopens)
    after = await traffic(gateway, "after", 40)

    old, new = request_ids(rotated), request_ids(audit)
    assert Counter(old + new) == Counter([*before, *answered_during, *after])  # each once
    assert set(before) <= set(old)
    assert set(after) <= set(new)
    assert any(i.startswith("during") for i in old)  # written between rename and signal
    if reopens > 1:  # every worker reopened: each answered some of the later requests
        assert len(set(after.values())) == reopens


async def test_a_single_process_reopens_on_sigusr1(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    raw = config_dict(upstream.url)
    raw["audit"] = {"path": str(audit)}
    gateway = start_gateway_process(tmp_path, raw=raw)
    try:
        await rotate_under_traffic(gateway, audit, reopens=1)
    finally:
        assert gateway.stop() == 0
    assert gateway.records("signal_ignored") == []


async def test_workers_each_reopen_on_the_sigusr1_the_parent_forwards(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    gateway = start_workers(tmp_path, upstream.url, redis_server.url, audit={"path": str(audit)})
    try:
        await rotate_under_traffic(gateway, audit, reopens=2)
    finally:
        assert gateway.stop() == 0
    assert sorted(r["worker"] for r in gateway.records("audit_reopened")) == ["1", "2"]
    [forwarded] = gateway.records("signal_forwarded")[:1]
    assert (forwarded["signal"], forwarded["workers"]) == ("SIGUSR1", ["1", "2"])
