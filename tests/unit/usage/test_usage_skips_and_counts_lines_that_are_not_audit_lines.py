"""Only audit lines count. The others are skipped and counted: another event of the log
stream (an audit trail without `server.audit_path` shares it), and unreadable lines: not
JSON, cut short by a crash, or missing a field the report reads. The line the audit stage
writes is read, whatever stage a request ended in."""

from __future__ import annotations

import io
import json
from pathlib import Path

from gateway.config import AuditConfig, ServerConfig
from gateway.errors import RateLimited
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from gateway.stages.audit import Audit
from gateway.teams import teams_of
from gateway.usage.report import GROUPINGS, UsageReport
from tests.conftest import an_exchange, unit_config
from tests.unit.usage.lines import audit_file, audit_line, report_of, rows_of


def test_other_events_and_unreadable_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = audit_line(team="search", prompt_tokens=7)
    missing_status = json.dumps({**json.loads(good), "status": None}) + "\n"
    negative_latency = json.dumps({**json.loads(good), "latency_ms": -1}) + "\n"
    # 1e400 is a JSON number that no float holds: read as infinity, not a latency.
    infinite_latency = (
        json.dumps({**json.loads(good), "latency_ms": 7}).replace(
            '"latency_ms": 7', '"latency_ms": 1e400'
        )
        + "\n"
    )
    lines = (
        good,
        '{"event":"request","status":200,"timestamp":"2025-03-10T12:00:00.000000Z"}\n',
        '{"event":"config_reloaded","level":"info"}\n',
        "not json\n",
        good[: len(good) // 2] + good,  # a write a crash cut, then the next one after it
        "\n",
        "[1, 2]\n",
        '{"event": 42}\n',
        missing_status,
        negative_latency,
        infinite_latency,
        good.replace("2025-03-10T12:00:00.000000Z", "last tuesday"),
        good,
        good[:-30],  # the last line, cut by a crash
    )

    report = report_of(tmp_path / "audit.jsonl", *lines)

    assert report.lines.counted == 2
    assert report.lines.other_events == 2
    assert report.lines.unreadable == len(lines) - 4
    assert report.lines.skipped == len(lines) - 2
    assert [row["prompt_tokens"] for row in rows_of(report)] == [14, 14]


def test_an_empty_file_counts_nothing(tmp_path: Path) -> None:
    report = report_of(tmp_path / "audit.jsonl")

    assert rows_of(report) == [
        {
            "requests": 0,
            "errors": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "latency_p50_ms": None,
            "latency_p95_ms": None,
            "error_codes": {},
        }
    ]


async def test_the_line_the_audit_stage_writes_is_read(tmp_path: Path) -> None:
    stream = io.StringIO()
    trail = AuditTrail(AuditConfig(), GatewayMetrics(), make_logger(ServerConfig()), stream)
    audit = Audit(trail)
    refused = an_exchange(team=teams_of(unit_config())["team-a"])
    refused.error = RateLimited("slow down")
    unknown = an_exchange()
    for exchange in (refused, unknown):
        await audit.enter(exchange)
        audit.leave(exchange)

    report = report_of(tmp_path / "audit.jsonl", stream.getvalue())
    rows = rows_of(report)

    assert report.lines.counted == 2
    assert [(row.get("team"), row["requests"], row["error_codes"]) for row in rows[:-1]] == [
        ("team-a", 1, {"rate_limit_exceeded": 1}),
        (None, 1, {}),  # no stage decided a status: not an error
    ]


def test_every_file_given_adds_to_one_report(tmp_path: Path) -> None:
    not_utf8 = tmp_path / "c.jsonl"
    not_utf8.write_bytes(
        audit_line(team="search")
        .replace("search", "se\udcffrch")
        .encode("utf-8", "surrogateescape")
    )
    report = UsageReport(GROUPINGS["team"])

    report.read(audit_file(tmp_path / "a.jsonl", audit_line(team="search")))
    report.read(audit_file(tmp_path / "b.jsonl", audit_line(team="search"), "junk\n"))
    report.read(not_utf8)

    assert [row["requests"] for row in rows_of(report)] == [2, 2]
    assert report.lines.unreadable == 2
