"""Audit files as they lie on disk, read line by line in bounded memory: the live file,
its rotations, compressed ones among them (gzip, as logrotate's `compress` makes them, or
bzip2 or xz), recognised by their first bytes whatever their name.

A line is returned as its bytes; whether it is an audit line is the reader's question (see
`report`). A line longer than MAX_LINE_BYTES (an audit line is a few hundred bytes; a
file a crash left full of zeros has no line ends at all) is returned empty, never held
whole. A compressed stream cut short or corrupt ends the file's lines with AuditFileError,
after every whole line before the damage.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import zlib
from collections.abc import Iterator
from io import BufferedIOBase
from pathlib import Path

# Longer lines are not audit lines; reading stops holding them past this.
MAX_LINE_BYTES = 1 << 20

_GZIP = b"\x1f\x8b"
_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"


class AuditFileError(Exception):
    """A file that cannot be read (or read to its end); the message names it and why."""


def check_readable(path: Path) -> tuple[int, int]:
    """The file's identity (device, inode: one file under two names, as overlapping globs
    give it, is one file); raises AuditFileError unless it can be opened and is in a
    format that is read."""
    with _opened(path):
        stat = path.stat()
        return stat.st_dev, stat.st_ino


def audit_lines(path: Path) -> Iterator[bytes]:
    """The lines of `path`, decompressed, each with its line end (the last line may have
    none: a write cut by a crash)."""
    read = 0
    with _opened(path) as stream:
        readline = stream.readline
        try:
            while line := readline(MAX_LINE_BYTES):
                read += 1
                if len(line) == MAX_LINE_BYTES and line[-1:] != b"\n":
                    while (rest := readline(MAX_LINE_BYTES)) and rest[-1:] != b"\n":
                        pass
                    line = b""
                yield line
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            # gzip's "Compressed file ended before the end-of-stream marker", a bad CRC,
            # corrupt data (BadGzipFile is an OSError), or the disk failing under a read.
            raise AuditFileError(f"{path}: unreadable after line {read}: {_reason(exc)}") from None


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BufferedIOBase]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed by the ExitStack below)
    except OSError as exc:
        raise AuditFileError(f"{path}: cannot read: {_reason(exc)}") from None
    with contextlib.ExitStack() as on_exit:
        on_exit.enter_context(raw)
        try:
            head = raw.read(len(_XZ))
            raw.seek(0)
        except OSError as exc:  # a directory opens on some systems, then fails to read
            raise AuditFileError(f"{path}: cannot read: {_reason(exc)}") from None
        stream: BufferedIOBase
        if head.startswith(_GZIP):
            stream = on_exit.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        elif head.startswith(_BZIP2):
            stream = on_exit.enter_context(bz2.BZ2File(raw, mode="rb"))
        elif head.startswith(_XZ):
            stream = on_exit.enter_context(lzma.LZMAFile(raw, mode="rb"))
        elif head.startswith(_ZSTD):
            raise AuditFileError(
                f"{path}: compressed with zstd, which is not read: decompress it first "
                "(zstd -d), or rotate with gzip, bzip2 or xz"
            )
        else:
            stream = raw
        yield stream


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
