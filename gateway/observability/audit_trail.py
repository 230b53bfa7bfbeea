"""The audit trail's writer: where the audit lines (`stages.audit`) go, and whether they get
there. The lines themselves are `JsonLines`' (see `logs.py`), without a level.

With `audit.path`, each line is appended to that file with one write(2) of the whole
encoded line, to a descriptor opened with O_APPEND: the kernel puts each such write at the
end of the file in one piece, so the lines of the worker processes that share the file
(`serve --workers N`) never interleave, and nothing waits in a buffer of the process (a
line is in the kernel's hands when the request's answer ends; a killed process loses
none).

What can go wrong is seen, counted and answered:
- a write that fails (ENOSPC, EDQUOT, EROFS, EIO...) or is cut short (the disk filled
  during it) loses its line: counted in `llm_gateway_audit_write_failures_total{reason}`,
  and the trail is *unavailable* (`available` False, `llm_gateway_audit_available` 0;
  `audit.on_failure: refuse` makes that 503s, see `stages.audit_gate`) until a line is
  written again. A cut line's fragment is truncated away, so that the next line, this
  process's or a sibling's, starts on a line of its own: a reader never sees two records
  glued together.
- the file deleted under the gateway (its lines would go to an inode nobody can read):
  seen before each write (see `_descriptor`), counted as `removed`, and the path created
  again for the line.
- after a failed write the path is opened again, so that the next line finds a file
  created again or a filesystem remounted.

`reopen()` (SIGUSR1, see `server.py`; a supervisor forwards it to every worker) opens the
path again and swaps the descriptor between two lines: logrotate's rename, then signal.
Lines written between the rename and the signal go to the renamed file; none is lost.

Without `audit.path` the lines go to the log stream, as the access lines do; a failed
write there is counted and makes the trail unavailable the same way, but the stream is
not reopened.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, TextIO

from structlog.typing import FilteringBoundLogger

from gateway.config import AuditConfig
from gateway.observability.logs import JsonLines
from gateway.observability.metrics import AUDIT_FAILURE_REASONS, GatewayMetrics

# Append-only, created if missing (an operator may have removed it), and not inherited by
# processes the gateway might start.
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
# Audit lines name teams, models and client addresses: not for every local user.
_MODE = 0o640

_REASONS = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "no_space",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
}


def failure_reason(error: OSError) -> str:
    """The `reason` label of a failed write or open."""
    return _REASONS.get(error.errno or 0, "other")


def _error_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


class AuditTrail(JsonLines):
    """The audit lines' writer, shared by every generation of the paths (see the module
    docstring). `available` is what `stages.audit_gate` reads."""

    def __init__(
        self,
        audit: AuditConfig,
        metrics: GatewayMetrics,
        log: FilteringBoundLogger,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__(stream or sys.stdout, with_level=False)
        self.path = audit.path
        self.available = True
        self._gauge = metrics.audit_available
        self._failures = {
            reason: metrics.audit_write_failures.labels(reason) for reason in AUDIT_FAILURE_REASONS
        }
        self._log = log
        self._fd: int | None = None
        # The last line was cut short and its fragment could not be taken off the file:
        # the next line starts with a newline of its own.
        self._torn = False
        if self.path is not None:
            # At start-up a path that cannot be opened stops the gateway (as a
            # configuration error would): it is never served unaudited from the start.
            self._fd = os.open(self.path, _FLAGS, _MODE)

    def _write(self, event: str, level: str, fields: dict[str, Any]) -> None:
        line = self.encode(event, level, fields) + b"\n"
        if self.path is None:
            self._to_stream(line)
        else:
            self._to_file(line)

    # ---------------------------------------------------------------- the file

    def _to_file(self, line: bytes) -> None:
        fd = self._descriptor()
        if fd is None:
            return  # counted: the path could not be opened
        if self._torn:
            line = b"\n" + line
        try:
            written = os.write(fd, line)
        except OSError as error:
            self._failed(failure_reason(error), error)
            self._open_again_quietly()
            return
        if written < len(line):
            # No second write for the rest: it could land after a sibling's line. The
            # filesystem had room for part of it only.
            self._take_off(fd, written)
            self._failed("no_space", None)
            return
        self._torn = False
        if not self.available:
            self._set_available()

    def _descriptor(self) -> int | None:
        """The descriptor to write the line to: the open file's, or, when the file was
        deleted, the path's opened again (None if it cannot be: the line is lost).

        One fstat per line (about a microsecond from Python, no path lookup; the line's
        encoding and write take several) is what makes a deletion visible before a line
        goes to it: a write to a deleted file succeeds, into an inode nobody can read, so
        without the check every line until the next SIGUSR1 would be lost without a
        trace. Checking less often (once a second, say) would save that microsecond but
        lose, uncounted, the lines of the seconds in between. A renamed file keeps its
        link (it is logrotate's, written to until the signal), a deleted one has none."""
        fd = self._fd
        if fd is not None:
            try:
                deleted = os.fstat(fd).st_nlink == 0
            except OSError:
                deleted = True
            if not deleted:
                return fd
            self._failures["removed"].inc()
            self._log.error("audit_file_removed", path=self.path)
            self._fd = None
            os.close(fd)  # frees the deleted file's space
        try:
            fd = os.open(self.path or "", _FLAGS, _MODE)
        except OSError as error:
            self._failed(failure_reason(error), error)
            return None
        self._fd = fd
        self._torn = False  # a new file
        return fd

    def _take_off(self, fd: int, written: int) -> None:
        """Takes the fragment of a line cut short off the end of the file, so that the
        next line written there (a sibling worker's too) starts on a line of its own.
        Only while the fragment is still the file's end. What this leaves open needs a
        sibling's write within the few microseconds between the calls below, with space
        freed in them, just after the disk filled: if it lands before the fstat, its line
        stays glued to the fragment; between the fstat and the truncation, it is cut."""
        try:
            end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the end of what was written
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - written)
            return
        except OSError:
            pass
        self._torn = True

    def _open_again_quietly(self) -> None:
        """After a failed write: the path opened again, for the next line (a file created
        again, a filesystem remounted); the open file is kept if the path cannot be."""
        try:
            fd = os.open(self.path or "", _FLAGS, _MODE)
        except OSError:
            return
        self._swap(fd)

    def _swap(self, fd: int) -> None:
        old, self._fd = self._fd, fd
        if old is None:
            return
        try:
            same = os.path.samestat(os.fstat(old), os.fstat(fd))
        except OSError:
            same = False
        if not same:
            self._torn = False
        os.close(old)

    def reopen(self) -> bool:
        """Opens the path again and writes the next lines there (SIGUSR1: logrotate's
        `postrotate`). If it cannot be opened, the lines keep going to the open file,
        renamed or not, and the failure is logged."""
        if self.path is None:
            self._log.info("audit_not_reopened", reason="no audit.path: lines go to the log")
            return False
        try:
            fd = os.open(self.path, _FLAGS, _MODE)
        except OSError as error:
            self._log.error("audit_reopen_failed", path=self.path, error=_error_name(error))
            return False
        self._swap(fd)
        self._log.info("audit_reopened", path=self.path)
        return True

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # ---------------------------------------------------------------- the log stream

    def _to_stream(self, line: bytes) -> None:
        try:
            self._stream.write(line.decode())
            self._stream.flush()
        except OSError as error:
            self._failed(failure_reason(error), error)
            return
        if not self.available:
            self._set_available()

    # ---------------------------------------------------------------- availability

    def _failed(self, reason: str, error: OSError | None) -> None:
        self._failures[reason].inc()
        if self.available:  # logged once per failing spell, not per line
            self.available = False
            self._gauge.set(0)
            self._log.error(
                "audit_unavailable",
                path=self.path,
                reason=reason,
                error="short write" if error is None else _error_name(error),
            )

    def _set_available(self) -> None:
        self.available = True
        self._gauge.set(1)
        self._log.info("audit_available_again", path=self.path)
