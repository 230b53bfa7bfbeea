"""Helpers for the tests of the audit trail's failures and rotation: a gateway whose audit
file is on a small real filesystem (tests/small_filesystem.py), the suite's config with a
safety model in front of team-a's requests, traffic on a gateway process, and reading the
audit file back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.app import WORKER_HEADER
from tests.conftest import (
    OPENAI_MODEL,
    RunningGateway,
    RunningUpstream,
    add_safety_model,
    auth,
    chat_body,
    config_dict,
    metric,
    post_chat,
)
from tests.gateway_process import GatewayProcess
from tests.integration.workers import fresh_connections

GUARD = "llama-guard-audit"
AVAILABLE = "llm_gateway_audit_available"
FAILURES = "llm_gateway_audit_write_failures_total"


def guarded_config(
    upstream: RunningUpstream, guard: RunningUpstream, audit_path: Path, on_failure: str
) -> dict[str, Any]:
    """The suite's configuration, audited to `audit_path`, team-a's requests checked by a
    safety model served by `guard` first."""
    raw = config_dict(upstream.url)
    raw["audit"] = {"path": str(audit_path), "on_failure": on_failure}
    add_safety_model(raw, guard.url, GUARD)
    raw["policies"] = {"guarded": {"safety": {"model": GUARD}}}
    raw["teams"]["team-a"]["policies"] = ["guarded"]
    return raw


def guarded_chat() -> dict[str, Any]:
    """A request of team-a that the safety model checks before it is sent upstream (a
    model of an OpenAI-dialect upstream: a Together-style one would check it itself)."""
    return chat_body(model=OPENAI_MODEL)


def audited(path: Path) -> list[dict[str, Any]]:
    """The audit file's records; fails on a line that is not whole JSON."""
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def serve_until_a_line_fails(gateway: RunningGateway, most: int = 20) -> int:
    """Requests, each served, until one's audit line cannot be written (the disk is full:
    the last page of the file holds a few more lines first); returns how many."""
    for served in range(1, most + 1):
        reply = await post_chat(gateway, guarded_chat())
        assert reply.status == 200, reply.body
        if await metric(gateway, AVAILABLE) == 0:
            return served
    raise AssertionError(f"{most} audit lines were written to a full disk")


CONCURRENCY = 8


async def traffic(gateway: GatewayProcess, prefix: str, count: int) -> dict[str, str]:
    """`count` requests, CONCURRENCY at a time, each on a connection of its own; the
    worker that answered each (its request id to the x-gateway-worker header, "" for a
    single process)."""
    slots = asyncio.Semaphore(CONCURRENCY)
    answered: dict[str, str] = {}
    async with fresh_connections() as session:

        async def one(request_id: str) -> None:
            async with (
                slots,
                session.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=chat_body(),
                    headers={**auth(), "x-request-id": request_id},
                ) as resp,
            ):
                assert resp.status == 200, await resp.read()
                answered[request_id] = resp.headers.get(WORKER_HEADER, "")

        await asyncio.gather(*(one(f"{prefix}-{i}") for i in range(count)))
    return answered


def request_ids(path: Path) -> list[str]:
    """Every line's request id; fails on a line that is not whole JSON."""
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line)["request_id"] for line in text.splitlines()]
