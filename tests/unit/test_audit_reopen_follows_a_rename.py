"""`reopen()` (what SIGUSR1 calls) after logrotate's rename: the lines written between the
rename and the reopen go to the renamed file, the later ones to a new file at the path;
none is lost. When the path cannot be opened again (the directory is read-only, a real
read-only mount), the lines keep going to the renamed file and the failure is logged."""

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


def trail_on(path: Path, log: io.StringIO) -> AuditTrail:
    return AuditTrail(
        AuditConfig(path=str(path)), GatewayMetrics(), make_logger(ServerConfig(), log)
    )


def test_lines_after_the_reopen_go_to_a_new_file(tmp_path: Path) -> None:
    path, rotated, log = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1", io.StringIO()
    trail = trail_on(path, log)
    trail.info("audit", request_id="r1")
    path.rename(rotated)
    trail.info("audit", request_id="r2")  # renamed, not removed: still written there

    assert trail.reopen()
    trail.info("audit", request_id="r3")

    assert ids(rotated) == ["r1", "r2"]
    assert ids(path) == ["r3"]
    assert trail.available
    assert [json.loads(line)["event"] for line in log.getvalue().splitlines()] == ["audit_reopened"]
    trail.close()


def test_a_reopen_that_fails_keeps_the_open_file(small_filesystem: SmallFilesystem) -> None:
    path = small_filesystem.directory / "audit.jsonl"
    rotated, log = small_filesystem.directory / "audit.jsonl.1", io.StringIO()
    trail = trail_on(path, log)
    trail.info("audit", request_id="r1")
    path.rename(rotated)
    small_filesystem.make_read_only()

    assert not trail.reopen()
    trail.info("audit", request_id="r2")

    assert ids(rotated) == ["r1", "r2"]
    assert not path.exists()
    assert trail.available
    [failed] = [json.loads(line) for line in log.getvalue().splitlines()]
    assert (failed["event"], failed["error"]) == ("audit_reopen_failed", "EROFS")
    trail.close()
