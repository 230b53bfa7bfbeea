"""Audit files are read as they lie on disk: plain, or compressed with gzip (logrotate's
`compress`), bzip2 or xz, told apart by their first bytes and not by their name; a line cut
by a crash is still returned (for the report to skip), a line without an end is never held
whole, and a compressed file cut short yields its whole lines, then an error naming it."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.usage.audit_files import (
    MAX_LINE_BYTES,
    AuditFileError,
    audit_lines,
    check_readable,
)

LINES = [b'{"event":"audit","n":1}\n', b'{"event":"audit","n":2}\n', b'{"event":"audit","n":3}\n']
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_plain_file_is_read_line_by_line(tmp_path: Path) -> None:
    path = written(tmp_path / "audit.jsonl", b"".join(LINES))

    assert list(audit_lines(path)) == LINES


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_a_compressed_file_is_recognised_by_its_first_bytes_whatever_its_name(
    tmp_path: Path, compressor: str
) -> None:
    path = written(tmp_path / "audit.jsonl.1", COMPRESSORS[compressor](b"".join(LINES)))

    assert list(audit_lines(path)) == LINES


def test_a_plain_file_named_gz_is_read_as_plain(tmp_path: Path) -> None:
    path = written(tmp_path / "audit.jsonl.2.gz", b"".join(LINES))

    assert list(audit_lines(path)) == LINES


def test_a_gzip_file_of_several_members_is_read_whole(tmp_path: Path) -> None:
    # `cat audit.jsonl.1.gz audit.jsonl.2.gz`, or a compressor appending, makes one.
    path = written(tmp_path / "both.gz", gzip.compress(LINES[0]) + gzip.compress(LINES[1]))

    assert list(audit_lines(path)) == LINES[:2]


def test_a_last_line_a_crash_cut_is_returned_without_its_end(tmp_path: Path) -> None:
    path = written(tmp_path / "audit.jsonl", LINES[0] + b'{"event":"au')

    assert list(audit_lines(path)) == [LINES[0], b'{"event":"au']


def test_a_line_longer_than_the_limit_is_returned_empty_and_the_next_lines_read(
    tmp_path: Path,
) -> None:
    zeros = b"\0" * (3 * MAX_LINE_BYTES + 17) + b"\n"  # a crash left a block of zeros
    path = written(tmp_path / "audit.jsonl", LINES[0] + zeros + LINES[1])

    lines = list(audit_lines(path))

    assert lines == [LINES[0], b"", LINES[1]]


def test_a_gzip_file_cut_short_yields_its_whole_lines_then_an_error_naming_it(
    tmp_path: Path,
) -> None:
    many = b"".join(b'{"event":"audit","n":%d}\n' % n for n in range(20_000))
    compressed = gzip.compress(many)
    path = written(tmp_path / "audit.jsonl.1.gz", compressed[: len(compressed) // 2])
    read: list[bytes] = []

    with pytest.raises(AuditFileError) as error:
        read.extend(audit_lines(path))

    assert 0 < len(read) < 20_000
    assert all(line == b'{"event":"audit","n":%d}\n' % n for n, line in enumerate(read[:-1]))
    assert str(error.value).startswith(f"{path}: unreadable after line ")


def test_a_corrupt_gzip_file_is_an_error_naming_it(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(b"".join(LINES) * 100))
    compressed[20:40] = b"\xff" * 20
    path = written(tmp_path / "audit.jsonl.1.gz", bytes(compressed))

    with pytest.raises(AuditFileError, match=str(path)):
        list(audit_lines(path))


def test_a_zstd_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = written(tmp_path / "audit.jsonl.1.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 20)

    with pytest.raises(AuditFileError, match=r"zstd, which is not read: decompress it"):
        check_readable(path)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_a_file_that_cannot_be_opened_is_named_with_why(tmp_path: Path, make: str) -> None:
    path = tmp_path / "audit.jsonl"
    if make == "directory":
        path.mkdir()

    with pytest.raises(AuditFileError) as error:
        check_readable(path)

    reason = "No such file or directory" if make == "missing" else "Is a directory"
    assert str(error.value) == f"{path}: cannot read: {reason}"


def test_one_file_under_two_names_has_one_identity(tmp_path: Path) -> None:
    path = written(tmp_path / "audit.jsonl", LINES[0])
    (tmp_path / "link.jsonl").symlink_to(path)

    assert check_readable(tmp_path / "link.jsonl") == check_readable(path)
    assert check_readable(written(tmp_path / "other.jsonl", LINES[0])) != check_readable(path)
