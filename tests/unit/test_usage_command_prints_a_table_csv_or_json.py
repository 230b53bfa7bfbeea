"""`llm-gateway usage` prints one row per group and a total: an aligned table (the
default), CSV with a header row, or a JSON document whose numbers are numbers. What the
rows leave out (the lines counted, outside the window, skipped) goes to stderr for the
table and CSV, into the document for JSON. Prices come from `--config`, read without the
upstream keys `serve` needs."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from tests.conftest import MODEL, OTHER_TEAM_MODEL, UPSTREAM_KEY_ENV, config_dict
from tests.unit.usage.lines import audit_file, audit_line

COLUMNS = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "latency_p50_ms",
    "latency_p95_ms",
]
PRICED = [*COLUMNS, "cost", "unpriced_tokens", "error_codes"]


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return audit_file(
        tmp_path / "audit.jsonl",
        audit_line(team="search", model=MODEL, prompt_tokens=2_000_000, completion_tokens=10),
        audit_line(team="search", model=OTHER_TEAM_MODEL, prompt_tokens=50, completion_tokens=7),
        audit_line(
            team="search",
            status=429,
            error_code="rate_limit_exceeded",
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=0.5,
        ),
        audit_line(
            team=None,
            model=None,
            status=401,
            error_code="invalid_api_key",
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=0.25,
        ),
        audit_line(timestamp="2024-12-31T23:59:59.000000Z"),
        '{"event":"config_reloaded"}\n',
        "garbage\n",
    )


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    raw = config_dict("http://127.0.0.1:9")
    raw["models"][MODEL]["price"] = {"input_per_million": 0.5, "output_per_million": 1.5}
    raw["tracing"] = {"endpoint": "http://127.0.0.1:4318", "headers_env": "OTLP_HEADERS"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    # The operator's shell has none of the gateway's secrets (upstream keys, the
    # collector's headers).
    monkeypatch.delenv(UPSTREAM_KEY_ENV, raising=False)
    monkeypatch.delenv("OTLP_HEADERS", raising=False)
    return path


def usage(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["usage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


SUMMARY = (
    "audit lines counted: 4, outside --since/--until: 1; lines skipped: 2 (other events: 1, "
    "unreadable: 1, i.e. not JSON, cut short or missing a field); latency quantiles within 1%\n"
)


def test_csv_has_a_header_a_row_per_group_and_a_total(
    audit: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = usage(
        capsys,
        "--audit",
        str(audit),
        "--since",
        "2025-01-01",
        "--by",
        "team,model",
        "--format",
        "csv",
        "--config",
        str(config),
    )

    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0
    assert rows[0] == ["team", "model", *PRICED]
    assert [row[:5] for row in rows[1:]] == [
        ["search", MODEL, "2", "1", "2000000"],
        ["search", OTHER_TEAM_MODEL, "1", "0", "50"],
        ["", "", "1", "1", "0"],
        ["(total)", "(total)", "4", "2", "2000050"],
    ]
    cost = dict(zip(rows[0], rows[1], strict=True))
    assert (cost["cost"], cost["unpriced_tokens"]) == ("1.000015", "0")
    assert [row[-3:] for row in rows[2:]] == [
        ["", "57", ""],
        ["", "0", "invalid_api_key=1"],
        ["1.000015", "57", "invalid_api_key=1;rate_limit_exceeded=1"],
    ]
    assert float(rows[3][6]) == pytest.approx(0.25, rel=0.01)
    assert err == SUMMARY


def test_json_numbers_are_numbers_and_the_skipped_lines_are_in_it(
    audit: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = usage(
        capsys,
        "--audit",
        str(audit),
        "--since",
        "2025-01-01T01:00:00+01:00",
        "--format",
        "json",
        "--config",
        str(config),
    )

    document: dict[str, Any] = json.loads(out)
    assert (code, err) == (0, "")
    assert document["by"] == ["team"]
    assert (document["since"], document["until"]) == ("2025-01-01T00:00:00.000000Z", None)
    assert document["latency_relative_error"] == 0.01
    search, nobody = document["groups"]
    assert search["team"] == "search"
    assert (search["requests"], search["errors"], search["error_codes"]) == (
        3,
        1,
        {"rate_limit_exceeded": 1},
    )
    assert (search["cost"], search["unpriced_tokens"]) == (1.000015, 57)
    assert isinstance(search["latency_p95_ms"], float)
    assert (nobody["team"], nobody["cost"]) == (None, None)
    assert document["total"]["requests"] == 4
    assert "team" not in document["total"]
    assert document["lines"] == {
        "counted": 4,
        "outside_window": 1,
        "skipped": 2,
        "skipped_other_events": 1,
        "skipped_unreadable": 1,
    }
    assert document["problems"] == []


def test_the_table_is_aligned_under_its_header(
    audit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = usage(capsys, "--audit", str(audit), "--since", "2025-01-01")

    header, rule, *rows, total_rule, total = out.splitlines()
    assert code == 0
    assert rule == total_rule and set(rule) == {"-", " "}
    spans, start = [], 0
    for dashes in rule.split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    cells = [[line[a:b].strip() for a, b in spans] for line in (header, *rows, total)]
    assert cells[0] == ["team", *COLUMNS, "error_codes"]
    assert [row[:4] for row in cells[1:]] == [
        ["search", "3", "1", "2000050"],
        ["(none)", "1", "1", "0"],
        ["(total)", "4", "2", "2000050"],
    ]
    assert cells[1][-1] == "rate_limit_exceeded=1"
    assert rows[0].index("3") + 1 == header.index("requests") + len("requests")  # right-aligned
    assert err == SUMMARY


def test_a_file_given_twice_is_read_once(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = usage(capsys, "--audit", str(audit), str(audit), "--format", "json")

    assert code == 0
    assert json.loads(out)["total"]["requests"] == 5
    assert err == f"llm-gateway usage: {audit} is {audit}; read once\n"


def test_a_compressed_file_cut_short_is_reported_and_the_exit_code_says_so(
    audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(audit_line(team="old") for _ in range(20_000)).encode()
    compressed = gzip.compress(lines)
    rotated = tmp_path / "audit.jsonl.1.gz"
    rotated.write_bytes(compressed[: len(compressed) // 2])

    code, out, err = usage(capsys, "--audit", str(rotated), str(audit), "--format", "csv")

    rows = list(csv.reader(io.StringIO(out)))
    assert code == 1
    assert rows[1][0] == "old" and 0 < int(rows[1][1]) < 20_000
    assert rows[-1][0] == "(total)"
    assert f"incomplete: {rotated}: unreadable after line " in err
