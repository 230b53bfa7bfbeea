"""The access line and the audit record are written by `JsonLines`, not structlog's
processor chain: the same JSON line the gateway's logger writes for the same call (fields
in call order, bound ones first, then event, level and a UTC timestamp), filtered by the
log level the same way; the audit record has no level and is never filtered."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import AuditConfig, ServerConfig
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import JsonLines, make_access_log, make_logger
from gateway.observability.metrics import GatewayMetrics

FIELDS: dict[str, Any] = {
    "request_id": "r1",
    "team": "team-a",
    "status": 200,
    "latency_ms": 1.25,
    "prompt_tokens": None,
    "policies": ["hipaa"],
    "stream": False,
}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_access_line_is_the_line_the_logger_writes() -> None:
    server = ServerConfig(log_format="json", log_level="info")
    by_logger, by_lines = io.StringIO(), io.StringIO()
    make_logger(server, by_logger).bind(worker="2").info("request", **FIELDS)
    make_access_log(server, make_logger(server, by_lines), by_lines, "2").info("request", **FIELDS)

    [expected], [written] = lines(by_logger), lines(by_lines)
    assert list(written) == list(expected)  # the same keys in the same order
    assert {k: v for k, v in written.items() if k != "timestamp"} == {
        k: v for k, v in expected.items() if k != "timestamp"
    }
    assert TIMESTAMP.fullmatch(written["timestamp"])
    stamped = datetime.fromisoformat(written["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - stamped).total_seconds()) < 5


def test_lines_below_the_log_level_are_not_written() -> None:
    stream = io.StringIO()
    warnings_only = ServerConfig(log_format="json", log_level="warning")
    access = make_access_log(warnings_only, make_logger(warnings_only, stream), stream, None)
    access.info("request", **FIELDS)
    access.debug("request", **FIELDS)
    debug = JsonLines(stream)
    debug.debug("probe", status=200)

    [line] = lines(stream)
    assert (line["event"], line["level"]) == ("probe", "debug")


def test_the_readable_format_keeps_the_logger() -> None:
    server = ServerConfig(log_format="console")
    log = make_logger(server, io.StringIO())
    assert make_access_log(server, log, None, None) is log


def test_an_audit_record_has_no_level_and_is_never_filtered(tmp_path: Path) -> None:
    """The same record on the log stream (no `audit.path`) and in the audit file, written
    whatever the log level."""
    quiet = make_logger(ServerConfig(log_level="error"), io.StringIO())
    stream = io.StringIO()
    AuditTrail(AuditConfig(), GatewayMetrics(), quiet, stream).info("audit", **FIELDS)
    in_file = AuditTrail(AuditConfig(path=str(tmp_path / "audit.jsonl")), GatewayMetrics(), quiet)
    in_file.info("audit", **FIELDS)
    in_file.close()

    [record] = lines(stream)
    [from_file] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    for written in (record, from_file):
        assert list(written) == [*FIELDS, "event", "timestamp"]
        assert written["policies"] == ["hipaa"]
