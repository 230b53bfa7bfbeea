"""`llm-gateway hash-key` prints, besides the key and its hash, the YAML line to paste
under `teams.<name>.key_hashes`: the plain hash, or with `--not-after` the entry that
expires; the configuration reads the line back as printed. A `--not-after` that is no
date, or is past, is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import TeamConfig
from gateway.stages.auth import hash_key


def printed(capsys: pytest.CaptureFixture[str], *options: str) -> dict[str, str]:
    assert main(["hash-key", *options]) == 0
    out = capsys.readouterr().out
    return dict(re.findall(r"^(key|hash|yaml):\s+(.+)$", out, re.MULTILINE))


def pasted(line: str) -> TeamConfig:
    """The team a configuration gets when the line is pasted under its key_hashes."""
    document: dict[str, Any] = yaml.safe_load(f"key_hashes:\n  {line}\nmodels: ['*']\n")
    return TeamConfig.model_validate(document)


def test_without_an_expiry_the_line_is_the_plain_hash(capsys: pytest.CaptureFixture[str]) -> None:
    lines = printed(capsys)

    assert lines["yaml"] == f"- {lines['hash']}"
    [entry] = pasted(lines["yaml"]).key_hashes
    assert (entry.hash, entry.not_after) == (hash_key(lines["key"]), None)


@pytest.mark.parametrize(
    ("not_after", "refused_from"),
    [
        ("2031-03-31", datetime(2031, 4, 1, tzinfo=UTC)),
        ("2031-03-31T12:00:00Z", datetime(2031, 3, 31, 12, 0, 0, 1, tzinfo=UTC)),
    ],
)
def test_with_an_expiry_the_line_is_the_entry_the_config_reads_back(
    capsys: pytest.CaptureFixture[str], not_after: str, refused_from: datetime
) -> None:
    lines = printed(capsys, "--not-after", not_after)

    assert lines["yaml"].startswith(f"- {{hash: {lines['hash']}, not_after: 2031-03-31")
    [entry] = pasted(lines["yaml"]).key_hashes
    assert entry.hash == hash_key(lines["key"])
    assert entry.refused_from == refused_from


@pytest.mark.parametrize(
    ("not_after", "why"),
    [("end of march", "expected a date"), ("2020-01-31", "already past")],
)
def test_a_not_after_that_is_no_date_or_past_is_refused(
    capsys: pytest.CaptureFixture[str], not_after: str, why: str
) -> None:
    assert main(["hash-key", "--not-after", not_after]) == 2

    out, err = capsys.readouterr()
    assert out == ""  # no key made
    assert f"--not-after: {why}" in err
