"""`--by` decides the rows: one per team, per model, or per (team, model) in either order;
each row counts its requests and sums its tokens, rows are sorted by their key with a
request refused before its team or model was known (null) last, and the total covers
every row."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.usage.report import UsageReport
from tests.conftest import MODEL, OPENAI_MODEL
from tests.unit.usage.lines import audit_line, report_of, rows_of

LINES = (
    audit_line(team="search", model=MODEL, prompt_tokens=100, completion_tokens=10),
    audit_line(team="search", model=OPENAI_MODEL, prompt_tokens=200, completion_tokens=20),
    audit_line(team="ads", model=MODEL, prompt_tokens=300, completion_tokens=30),
    audit_line(team="search", model=MODEL, prompt_tokens=400, completion_tokens=None),
    audit_line(team=None, model=None, status=401, prompt_tokens=None, completion_tokens=None),
)


def report(tmp_path: Path, by: str) -> UsageReport:
    return report_of(tmp_path / "audit.jsonl", *LINES, by=by)


def usage(rows: list[dict[str, object]], *keys: str) -> list[tuple[object, ...]]:
    return [
        (*(row.get(k, "(total)") for k in keys), row["requests"], row["prompt_tokens"])
        for row in rows
    ]


def test_by_team(tmp_path: Path) -> None:
    rows = rows_of(report(tmp_path, "team"))

    assert usage(rows, "team") == [
        ("ads", 1, 300),
        ("search", 3, 700),
        (None, 1, 0),
        ("(total)", 5, 1000),
    ]
    assert [row["completion_tokens"] for row in rows] == [30, 30, 0, 60]


def test_by_model(tmp_path: Path) -> None:
    rows = rows_of(report(tmp_path, "model"))

    assert usage(rows, "model") == [
        (OPENAI_MODEL, 1, 200),
        (MODEL, 3, 800),
        (None, 1, 0),
        ("(total)", 5, 1000),
    ]


@pytest.mark.parametrize("by", ["team,model", "model,team"])
def test_by_team_and_model_in_the_order_asked(tmp_path: Path, by: str) -> None:
    keys = by.split(",")

    rows = rows_of(report(tmp_path, by))

    assert [list(row)[:2] for row in rows[:-1]] == [keys] * 4
    expected = {
        ("ads", MODEL): (1, 300),
        ("search", OPENAI_MODEL): (1, 200),
        ("search", MODEL): (2, 500),
        (None, None): (1, 0),
    }
    assert {
        (row["team"], row["model"]): (row["requests"], row["prompt_tokens"]) for row in rows[:-1]
    } == expected
    assert (rows[-1]["requests"], rows[-1]["prompt_tokens"]) == (5, 1000)
    assert [row[keys[0]] for row in rows[:-1]][-1] is None  # null sorts last


def test_latency_quantiles_are_per_row(tmp_path: Path) -> None:
    lines = [audit_line(team="fast", latency_ms=float(ms)) for ms in range(1, 101)]
    lines += [audit_line(team="slow", latency_ms=float(ms * 100)) for ms in range(1, 101)]

    rows = rows_of(report_of(tmp_path / "audit.jsonl", *lines))

    p50 = [row["latency_p50_ms"] for row in rows]
    p95 = [row["latency_p95_ms"] for row in rows]
    # Ranks 49 and 94 of 100 (0-based); of the 200 in the total, 99 (the fast 100) and 189
    # (the slow 9000).
    for reported, exact in zip(p50 + p95, [50, 5000, 100, 95, 9500, 9000], strict=True):
        assert isinstance(reported, float)
        assert abs(reported - exact) <= 0.01 * exact
