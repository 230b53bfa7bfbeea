"""The usage report printed: an aligned table for people, CSV and JSON for programs.

One row per group, sorted by its key (a null team or model, a request refused before its
team or model was known, last), then the total. The columns, in every format: the group's
key fields, `requests`, `errors`, `prompt_tokens`, `completion_tokens`, `latency_p50_ms`,
`latency_p95_ms`, when prices were given `cost` and `unpriced_tokens`, and `error_codes`
(each code with its count, most frequent first: `rate_limit_exceeded=3;model_overloaded=1`
in the table and CSV, an object in JSON). A null is `-` in the table and an empty
cell in CSV; the total row's key cells read `(total)` (no team or model name can: names
start with a letter or digit).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from decimal import Decimal

from gateway.config import ModelPrice
from gateway.usage.latency import RELATIVE_ERROR
from gateway.usage.report import GroupUsage, UsageReport, timestamp_text

TOTAL = "(total)"
NO_NAME = "(none)"

Cells = dict[str, object]


def columns(report: UsageReport, prices: Mapping[str, ModelPrice] | None) -> list[str]:
    names = [
        *report.by,
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "latency_p50_ms",
        "latency_p95_ms",
    ]
    if prices is not None:
        names += ["cost", "unpriced_tokens"]
    # Last: the one column of unbounded width.
    return [*names, "error_codes"]


def group_rows(report: UsageReport, prices: Mapping[str, ModelPrice] | None) -> list[Cells]:
    """One row per group, keyed by column name, values as JSON has them."""

    def order(key: tuple[str | None, ...]) -> tuple[tuple[bool, str], ...]:
        return tuple((value is None, value or "") for value in key)

    return [
        {**dict(zip(report.by, key, strict=True)), **_cells(report.groups[key], prices)}
        for key in sorted(report.groups, key=order)
    ]


def total_row(report: UsageReport, prices: Mapping[str, ModelPrice] | None) -> Cells:
    return _cells(report.total(), prices)


def _cells(usage: GroupUsage, prices: Mapping[str, ModelPrice] | None) -> Cells:
    p50, p95 = usage.latency.quantile(0.5), usage.latency.quantile(0.95)
    cells: Cells = {
        "requests": usage.requests,
        "errors": sum(usage.errors.values()),
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        # The audit line's resolution: the microsecond.
        "latency_p50_ms": None if p50 is None else round(p50, 3),
        "latency_p95_ms": None if p95 is None else round(p95, 3),
    }
    if prices is not None:
        cells["cost"], cells["unpriced_tokens"] = usage.cost(prices)
    cells["error_codes"] = dict(sorted(usage.errors.items(), key=lambda item: (-item[1], item[0])))
    return cells


def as_json(report: UsageReport, prices: Mapping[str, ModelPrice] | None) -> str:
    window = report.window
    document = {
        "by": list(report.by),
        "since": None if window.since is None else timestamp_text(window.since),
        "until": None if window.until is None else timestamp_text(window.until),
        "latency_relative_error": RELATIVE_ERROR,
        "groups": group_rows(report, prices),
        "total": total_row(report, prices),
        "lines": {
            "counted": report.lines.counted,
            "outside_window": report.lines.outside_window,
            "skipped": report.lines.skipped,
            "skipped_other_events": report.lines.other_events,
            "skipped_unreadable": report.lines.unreadable,
        },
        "problems": report.problems,
    }
    return json.dumps(document, indent=2, default=_number) + "\n"


def _number(value: object) -> float:
    if isinstance(value, Decimal):  # a cost, already rounded to millionths
        return float(value)
    raise TypeError(f"not serializable: {type(value).__name__}")


def as_csv(report: UsageReport, prices: Mapping[str, ModelPrice] | None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = columns(report, prices)
    writer.writerow(names)
    total = {**dict.fromkeys(report.by, TOTAL), **total_row(report, prices)}
    for row in [*group_rows(report, prices), total]:
        writer.writerow([_text(row[name], null="") for name in names])
    return out.getvalue()


def as_table(report: UsageReport, prices: Mapping[str, ModelPrice] | None) -> str:
    names = columns(report, prices)
    rows = [
        [
            NO_NAME if name in report.by and row[name] is None else _text(row[name], null="-")
            for name in names
        ]
        for row in group_rows(report, prices)
    ]
    total = {**dict.fromkeys(report.by, TOTAL), **total_row(report, prices)}
    rows.append([_text(total[name], null="-") for name in names])
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)]
    # Names and codes read from the left, numbers from the right.
    left = {*report.by, "error_codes"}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if name in left else cell.rjust(width)
            for name, cell, width in zip(names, cells, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(names), rule, *map(line, rows[:-1]), rule, line(rows[-1])]) + "\n"


def _text(value: object, *, null: str) -> str:
    if value is None:
        return null
    if isinstance(value, dict):
        return ";".join(f"{code}={count}" for code, count in value.items())
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary(report: UsageReport) -> str:
    """What the table and CSV leave out, for stderr: the lines counted and skipped."""
    lines = report.lines
    text = (
        f"audit lines counted: {lines.counted}, outside --since/--until: "
        f"{lines.outside_window}; lines skipped: {lines.skipped} (other events: "
        f"{lines.other_events}, unreadable: {lines.unreadable}, i.e. not JSON, cut short or "
        f"missing a field); latency quantiles within {RELATIVE_ERROR:.0%}"
    )
    return "\n".join([text, *(f"incomplete: {problem}" for problem in report.problems)])
