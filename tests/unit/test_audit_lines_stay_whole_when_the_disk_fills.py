"""On a filesystem that fills up (a real 64 KB tmpfs), the audit line the disk could hold
only part of counts as failed (`no_space`), its fragment is taken off the file, and the
trail is unavailable; once space is freed the next line is written whole, on a line of its
own, and the trail is available again. A reader of the file never sees a cut or glued
record."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from gateway.config import AuditConfig, ServerConfig
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from tests.small_filesystem import PAGE, SmallFilesystem

# A record of about 1.5 KB: the third one crosses the end of the file's first page.
PAD = "x" * 1400


def audited(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_line_cut_short_is_taken_off_and_the_next_starts_fresh(
    small_filesystem: SmallFilesystem,
) -> None:
    path = small_filesystem.directory / "audit.jsonl"
    metrics, log = GatewayMetrics(), io.StringIO()
    trail = AuditTrail(AuditConfig(path=str(path)), metrics, make_logger(ServerConfig(), log))
    trail.info("audit", request_id="r0", pad=PAD)  # the file's first page
    small_filesystem.fill()

    written = 0
    for number in range(1, 10):
        before = path.stat().st_size
        trail.info("audit", request_id=f"r{number}", pad=PAD)
        if not trail.available:
            break
        written = number
    # The failed line had room for its start in the page: a short write, not a refusal.
    assert before % PAGE > 0 and before % PAGE + len(PAD) > PAGE
    assert path.stat().st_size == before  # its fragment is gone
    assert [r["request_id"] for r in audited(path)] == [f"r{n}" for n in range(written + 1)]
    assert (
        metrics.registry.get_sample_value(
            "llm_gateway_audit_write_failures_total", {"reason": "no_space"}
        )
        == 1
    )
    assert metrics.registry.get_sample_value("llm_gateway_audit_available") == 0
    [unavailable] = [json.loads(line) for line in log.getvalue().splitlines()]
    assert (unavailable["event"], unavailable["reason"]) == ("audit_unavailable", "no_space")

    trail.info("audit", request_id="still-full", pad=PAD)  # no page to be had: ENOSPC
    small_filesystem.free()
    trail.info("audit", request_id="after", pad=PAD)

    ids = [r["request_id"] for r in audited(path)]
    assert ids == [*(f"r{n}" for n in range(written + 1)), "after"]
    assert trail.available
    assert metrics.registry.get_sample_value("llm_gateway_audit_available") == 1
    assert (
        metrics.registry.get_sample_value(
            "llm_gateway_audit_write_failures_total", {"reason": "no_space"}
        )
        == 2
    )
    assert json.loads(log.getvalue().splitlines()[-1])["event"] == "audit_available_again"
    trail.close()


def test_each_line_is_one_write_to_an_append_only_descriptor(tmp_path: Path) -> None:
    """What keeps the lines of several processes apart: O_APPEND, and the whole line in
    one write (the file never holds a line the writer is still adding to)."""
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(path=str(path)), GatewayMetrics(), make_logger(ServerConfig()))
    [descriptor] = [
        int(fd)
        for fd in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve())
    ]
    flags = int(
        Path(f"/proc/self/fdinfo/{descriptor}").read_text().split("flags:")[1].split()[0], 8
    )
    assert flags & os.O_APPEND
    for number in range(3):
        trail.info("audit", request_id=f"r{number}", pad=PAD)
        assert path.read_bytes().endswith(b"\n")  # no buffer holds part of a line
    assert [r["request_id"] for r in audited(path)] == ["r0", "r1", "r2"]
    trail.close()
