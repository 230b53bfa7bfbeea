"""An audit file deleted under the gateway is seen before the next line is written to it
(a write to a deleted file succeeds, into an inode nobody can read): counted as `removed`,
and the path is created again for the line. If it cannot be (its directory is read-only,
here a real read-only mount, which stops root too), the line fails (`permission`), the
trail is unavailable, and the first line written once the directory is writable again
makes it available."""

from __future__ import annotations

import io
import json
from pathlib import Path

from gateway.config import AuditConfig, ServerConfig
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from tests.small_filesystem import SmallFilesystem


def ids(path: Path) -> list[object]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def failures(metrics: GatewayMetrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "llm_gateway_audit_write_failures_total", {"reason": reason}
    )


def events(log: io.StringIO) -> list[object]:
    return [json.loads(line)["event"] for line in log.getvalue().splitlines()]


def test_a_deleted_file_is_created_again_for_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics, log = GatewayMetrics(), io.StringIO()
    trail = AuditTrail(AuditConfig(path=str(path)), metrics, make_logger(ServerConfig(), log))
    trail.info("audit", request_id="before")
    path.unlink()

    trail.info("audit", request_id="after")

    assert ids(path) == ["after"]
    assert failures(metrics, "removed") == 1
    assert trail.available  # the line was written
    assert events(log) == ["audit_file_removed"]
    trail.close()


def test_a_deleted_file_that_cannot_be_created_again_makes_the_trail_unavailable(
    small_filesystem: SmallFilesystem,
) -> None:
    path = small_filesystem.directory / "audit.jsonl"
    metrics, log = GatewayMetrics(), io.StringIO()
    trail = AuditTrail(AuditConfig(path=str(path)), metrics, make_logger(ServerConfig(), log))
    trail.info("audit", request_id="before")
    path.unlink()
    small_filesystem.make_read_only()

    trail.info("audit", request_id="lost-1")
    trail.info("audit", request_id="lost-2")

    assert not trail.available
    assert metrics.registry.get_sample_value("llm_gateway_audit_available") == 0
    assert failures(metrics, "removed") == 1
    assert failures(metrics, "permission") == 2  # each line tried to create the file

    small_filesystem.make_writable()
    trail.info("audit", request_id="back")

    assert ids(path) == ["back"]
    assert trail.available
    assert events(log) == ["audit_file_removed", "audit_unavailable", "audit_available_again"]
    trail.close()
