"""--since and --until bound the lines counted: a line at `since` counts, one at `until` does
not (so consecutive months never count a line twice); the others are counted apart.
Timestamps in other ISO 8601 forms (no microseconds, an offset) are read as the moments
they name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.usage.report import Window, moment
from tests.unit.usage.lines import audit_line, report_of

MARCH = Window(datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))


def counted(tmp_path: Path, window: Window, *stamps: str) -> list[str]:
    """The timestamps of `stamps` the window counts (each line's team is its index)."""
    lines = [audit_line(timestamp=stamp, team=f"t{i}") for i, stamp in enumerate(stamps)]
    report = report_of(tmp_path / "audit.jsonl", *lines, window=window)
    assert report.lines.counted + report.lines.outside_window == len(stamps)
    assert report.lines.skipped == 0
    return [stamps[int(str(team)[1:])] for (team,) in report.groups]


def test_since_is_included_and_until_excluded(tmp_path: Path) -> None:
    stamps = (
        "2025-02-28T23:59:59.999999Z",
        "2025-03-01T00:00:00.000000Z",
        "2025-03-15T08:30:00.123456Z",
        "2025-03-31T23:59:59.999999Z",
        "2025-04-01T00:00:00.000000Z",
    )

    assert counted(tmp_path, MARCH, *stamps) == list(stamps[1:4])


def test_either_bound_may_be_left_open(tmp_path: Path) -> None:
    stamps = ("2020-01-01T00:00:00.000000Z", "2025-03-01T00:00:00.000000Z")

    assert counted(tmp_path, Window(since=MARCH.since), *stamps) == [stamps[1]]
    assert counted(tmp_path, Window(until=MARCH.since), *stamps) == [stamps[0]]
    assert counted(tmp_path, Window(), *stamps) == list(stamps)


def test_other_iso_forms_are_read_as_the_moments_they_name(tmp_path: Path) -> None:
    stamps = (
        "2025-03-01T00:00:00Z",  # a logger that drops zero microseconds: since, counted
        "2025-04-01T01:59:59+02:00",  # 23:59:59 UTC on 31 March: counted
        "2025-04-01T02:00:00+02:00",  # until: not
        "2025-02-28T23:59:59.5Z",
    )

    assert counted(tmp_path, MARCH, *stamps) == list(stamps[:2])


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("2025-03-01", datetime(2025, 3, 1, tzinfo=UTC)),
        ("2025-03-01T12:30", datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
        ("2025-03-01T12:30:00Z", datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
        (
            "2025-03-01T12:30:00+05:30",
            datetime(2025, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
    ],
)
def test_the_options_take_a_date_or_a_time_utc_unless_it_says(text: str, meant: datetime) -> None:
    assert moment(text) == meant


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "1740787200", ""])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        moment(text)
