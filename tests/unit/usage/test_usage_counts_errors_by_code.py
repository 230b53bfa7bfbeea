"""Errors are the answers with a status of 400 or more, counted by the audit line's
`error_code`; a line without one (written before the field existed, a client that left,
an error body without a code) is counted by its status, as `status_<status>`. Codes are
listed most frequent first."""

from __future__ import annotations

from pathlib import Path

from tests.unit.usage.lines import ABSENT, audit_line, report_of, rows_of


def test_errors_are_counted_by_code_then_by_status(tmp_path: Path) -> None:
    lines = [
        audit_line(status=200),
        audit_line(status=200, error_code=ABSENT),  # an older line that succeeded
        audit_line(status=429, error_code="rate_limit_exceeded"),
        audit_line(status=429, error_code="rate_limit_exceeded"),
        audit_line(status=429, error_code="upstream_rate_limited"),
        audit_line(status=503, error_code="model_overloaded"),
        audit_line(status=503, error_code=ABSENT),  # an older line
        audit_line(status=503, error_code=ABSENT),
        audit_line(status=499, error_code=None),  # the client left
        audit_line(status=400, error_code=None),  # a body with a null code
        audit_line(status=401, error_code="invalid_api_key", team=None, model=None),
    ]

    rows = rows_of(report_of(tmp_path / "audit.jsonl", *lines))

    search, nobody, total = rows
    codes = search["error_codes"]
    assert isinstance(codes, dict)
    assert (search["requests"], search["errors"]) == (10, 8)
    assert list(codes.items()) == [
        ("rate_limit_exceeded", 2),
        ("status_503", 2),
        ("model_overloaded", 1),
        ("status_400", 1),
        ("status_499", 1),
        ("upstream_rate_limited", 1),
    ]
    assert (nobody["errors"], nobody["error_codes"]) == (1, {"invalid_api_key": 1})
    assert total["errors"] == 9
    assert total["error_codes"] == {**codes, "invalid_api_key": 1}


def test_a_row_without_errors_has_none(tmp_path: Path) -> None:
    [row, _] = rows_of(report_of(tmp_path / "audit.jsonl", audit_line(status=200)))

    assert (row["errors"], row["error_codes"]) == (0, {})
