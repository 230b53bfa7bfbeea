"""`llm-gateway usage` refuses what it cannot honour with exit code 2 and a message that
names the option, before reading any audit line: a time that is not ISO 8601, a window
that ends before it starts, an unknown grouping or format, an audit file that cannot be
read (every file is checked first), an invalid configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from tests.unit.usage.lines import audit_file, audit_line


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `usage` says on stderr, having exited with 2 and printed no report."""
    code: int | str | None
    try:
        code = main(["usage", *argv])
    except SystemExit as stopped:  # argparse's own refusals
        code = stopped.code
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    return err


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return audit_file(tmp_path / "audit.jsonl", audit_line())


@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("value", ["yesterday", "2025-02-30", "03/01/2025", ""])
def test_a_time_that_is_not_iso_8601_is_refused_naming_the_option(
    audit: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    err = refusal(capsys, "--audit", str(audit), option, value)

    assert f"argument {option}: expected an ISO 8601 date or time" in err


@pytest.mark.parametrize("until", ["2025-03-01", "2025-02-01"])
def test_a_window_that_ends_before_it_starts_is_refused(
    audit: Path, capsys: pytest.CaptureFixture[str], until: str
) -> None:
    err = refusal(capsys, "--audit", str(audit), "--since", "2025-03-01", "--until", until)

    assert err == "llm-gateway usage: --until must be later than --since\n"


@pytest.mark.parametrize(("option", "value"), [("--by", "user"), ("--format", "xml")])
def test_an_unknown_grouping_or_format_is_refused_naming_the_option(
    audit: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    err = refusal(capsys, "--audit", str(audit), option, value)

    assert f"argument {option}: invalid choice: '{value}'" in err


def test_without_audit_files_it_says_which_option_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "the following arguments are required: --audit" in refusal(capsys)


def test_an_unreadable_audit_file_is_refused_before_any_is_read(
    audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "audit.jsonl.3.gz"

    err = refusal(capsys, "--audit", str(audit), str(missing))

    assert err == f"llm-gateway usage: --audit {missing}: cannot read: No such file or directory\n"


def test_an_invalid_configuration_is_refused_with_each_problem(
    audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "upstreams: {}\nteams: {}\nmodels:\n  m:\n    upstreams: [{upstream: u}]\n"
        "    price: {input_per_million: -1, output_per_million: 1}\n",
        encoding="utf-8",
    )

    err = refusal(capsys, "--audit", str(audit), "--config", str(config))

    assert err.startswith(f"{config}: invalid configuration\n")
    assert "  models.m.price.input_per_million: Input should be greater than or equal to 0\n" in err
