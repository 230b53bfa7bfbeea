"""A real filesystem of 64 KB, for what a full disk and an unwritable directory do to the
audit trail: a tmpfs mounted on a test's directory (mounting needs root, which the suite
runs as, on CI too), filled by a filler file to its last page, and made read-only by a
read-only bind mount of the directory over itself. Root ignores permission bits, so a
chmod would not stop the gateway; a read-only mount stops root too (EROFS)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

SIZE = "64k"
PAGE = 4096


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"mount {' '.join(args)}: {done.stderr}"


def _unmount(directory: Path) -> None:
    # Lazily: a descriptor still open there (a gateway being torn down) must not fail the
    # test; the kernel lets the mount go with its last descriptor.
    subprocess.run(["umount", "--lazy", str(directory)], capture_output=True, check=False)


class SmallFilesystem:
    """A tmpfs of SIZE on `directory` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.filler = directory / "filler"
        self._read_only = False

    def mount(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(self.directory))

    def unmount(self) -> None:
        if self._read_only:
            _unmount(self.directory)
        _unmount(self.directory)

    def free_bytes(self) -> int:
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize

    def fill(self) -> None:
        """Takes every free page with the filler file: what is left is the room in the
        last page of each file already there."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for chunk in (b"\0" * PAGE, b"\0"):
                with contextlib.suppress(OSError):
                    while os.write(fd, chunk) == len(chunk):
                        pass
        finally:
            os.close(fd)
        assert self.free_bytes() == 0

    def free(self) -> None:
        self.filler.unlink()
        assert self.free_bytes() > 0

    def make_read_only(self) -> None:
        """New opens and creations in the directory fail with EROFS, for root too; files
        opened before keep their descriptors (on the writable mount below)."""
        _mount("--bind", str(self.directory), str(self.directory))
        _mount("-o", "remount,ro,bind", str(self.directory))
        self._read_only = True
        try:
            (self.directory / "probe").touch()
        except OSError as error:
            assert error.errno == errno.EROFS, error
        else:
            raise AssertionError("the directory is still writable")

    def make_writable(self) -> None:
        _unmount(self.directory)
        self._read_only = False


@contextlib.contextmanager
def small_filesystem_on(directory: Path) -> Iterator[SmallFilesystem]:
    filesystem = SmallFilesystem(directory)
    filesystem.mount()
    try:
        yield filesystem
    finally:
        filesystem.unmount()
