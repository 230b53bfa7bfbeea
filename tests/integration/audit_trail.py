"""Helpers for the tests of the audit trail's failures: a gateway whose audit file is on a
small real filesystem (tests/small_filesystem.py), the suite's config with a safety model
in front of team-a's requests, and reading the audit file back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import (
    OPENAI_MODEL,
    RunningGateway,
    RunningUpstream,
    add_safety_model,
    chat_body,
    config_dict,
    metric,
    post_chat,
)

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
