"""Audit lines as the gateway writes them (the fields of `Exchange.summary()` and the audit
stage, `event` and `timestamp` last), for the usage report's tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import ModelPrice
from gateway.usage.render import Cells, group_rows, total_row
from gateway.usage.report import GROUPINGS, UsageReport, Window
from tests.conftest import MODEL

# A field left out of the line (an older line has no `error_code`).
ABSENT = object()


def audit_line(
    *,
    timestamp: str = "2025-03-10T12:00:00.000000Z",
    team: str | None = "search",
    model: str | None = MODEL,
    status: int = 200,
    error_code: object = None,
    latency_ms: float = 100.0,
    prompt_tokens: int | None = 10,
    completion_tokens: int | None = 5,
) -> str:
    fields: dict[str, Any] = {
        "request_id": "0123456789abcdef0123456789abcdef",
        "team": team,
        "model": model,
        "upstream": None if model is None else "fake",
        "status": status,
        "outcome": "ok",
        "latency_ms": latency_ms,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "queue_wait_ms": 0.0,
        "error_code": error_code,
        "method": "POST",
        "attempts": 1,
        "policies": [],
        "compliance": "none",
        "safety_verdict": "not_checked",
        "answer_safety_verdict": None,
        "auth_failure": None,
        "client_address": None,
        "key_fingerprint": None,
        "event": "audit",
        "timestamp": timestamp,
    }
    return json.dumps({k: v for k, v in fields.items() if v is not ABSENT}) + "\n"


def audit_file(path: Path, *lines: str) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


def report_of(
    path: Path, *lines: str, by: str = "team", window: Window | None = None
) -> UsageReport:
    """The report of one audit file of `lines`."""
    report = UsageReport(GROUPINGS[by], window)
    report.read(audit_file(path, *lines))
    return report


def rows_of(report: UsageReport, prices: Mapping[str, ModelPrice] | None = None) -> list[Cells]:
    """The report's group rows, then its total, as JSON has them."""
    return [*group_rows(report, prices), total_row(report, prices)]
