"""The gateway as a real process (`python -m gateway serve`) on a loopback port, for what
only a process has: its connection handling (timeouts, cap, malformed HTTP), its signals,
its open-files limit and its CPU time; and raw-socket HTTP to talk to it byte by byte."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict, free_port

ROOT = Path(__file__).resolve().parents[1]
# An upstream nobody listens on, for gateways whose tests never reach one.
NO_UPSTREAM = "http://127.0.0.1:9"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    # The configuration file it serves (a reload reads it again) and its pid file.
    config: Path
    pid_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the process wrote, stdout and stderr."""
        return self.log.read_text(errors="replace")

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """Its JSON log lines, optionally only those of one event (a line still being
        written, while it runs, is left for the next call)."""
        text = self.output()
        text = text[: text.rfind("\n") + 1]
        lines = [json.loads(line) for line in text.splitlines() if line[:1] == "{"]
        return [r for r in lines if event is None or r.get("event") == event]

    def cpu_seconds(self) -> float:
        """User and system CPU time the process used so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def alive(self) -> bool:
        return self.process.poll() is None

    def worker_pids(self) -> dict[str, int]:
        """With --workers: the pid of each worker id now (the latest started)."""
        return {r["worker"]: r["pid"] for r in self.records("worker_started")}

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        if self.alive():
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.alive():
                self.process.kill()
                self.process.wait()


def wait_until_ready(
    process: subprocess.Popen[bytes], port: int, log: Path, seconds: float = 30
) -> None:
    """Until the gateway `process` started answers /readyz on `port` with 200; fails, with
    its output (`log`), if it exits or is not ready within `seconds`."""
    deadline = time.monotonic() + seconds
    while raw_request(port, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").status != 200:
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"not ready in {seconds} s:\n{log.read_text()}"
        time.sleep(0.05)


def start_gateway_process(
    directory: Path,
    upstream_url: str = NO_UPSTREAM,
    *,
    open_files: tuple[int, int] | None = None,
    raw: dict[str, Any] | None = None,
    workers: int | None = None,
    **server: Any,
) -> GatewayProcess:
    """Starts `serve` on a free port with the suite's configuration (`server` overrides
    `server:`; or `raw`, a whole configuration), `open_files` as its RLIMIT_NOFILE (soft,
    hard) and `--workers` if given; returns once /readyz answers 200 (and every worker
    listens)."""
    port = free_port()
    config = raw or config_dict(upstream_url, **server)
    config["server"].update(port=port)
    path = directory / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = directory / f"gateway-{port}.log"
    pid_file = directory / f"gateway-{port}.pid"

    def limit_open_files() -> None:
        assert open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "serve", "--config", str(path)),
                *("--pid-file", str(pid_file)),
                *(() if workers is None else ("--workers", str(workers))),
            ],
            cwd=ROOT,
            env={**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY, "PYTHONUNBUFFERED": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=None if open_files is None else limit_open_files,
        )
    running = GatewayProcess(process, port, log, path, pid_file)
    wait_until_ready(process, port, log)
    deadline = time.monotonic() + 30
    while workers is not None and len(running.records("listening")) < workers:
        assert running.alive(), running.output()
        assert time.monotonic() < deadline, f"not every worker listened:\n{running.output()}"
        time.sleep(0.05)
    return running


@contextmanager
def gateway_process(
    directory: Path, upstream_url: str = NO_UPSTREAM, **options: Any
) -> Iterator[GatewayProcess]:
    running = start_gateway_process(directory, upstream_url, **options)
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class RawReply:
    """What came back on a raw connection: the parsed status, headers (names lower-cased)
    and body, every byte as received, and whether the server closed the connection."""

    raw: bytes
    closed: bool

    @property
    def status(self) -> int:
        parts = self.raw.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    @property
    def headers(self) -> dict[str, str]:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
        return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head)}

    @property
    def body(self) -> bytes:
        return self.raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.raw else b""

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    port: int, data: bytes, timeout: float = 5.0, *, until_closed: bool = False
) -> RawReply:
    """Sends `data` on a new connection and reads until the server closes it, an answer
    with a Content-Length is complete (unless `until_closed`), or `timeout` passes."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return RawReply(b"", closed=True)
    with sock:
        # The answer may have been written before the server stopped reading.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return read_reply(sock, timeout, until_closed=until_closed)


def read_reply(sock: socket.socket, timeout: float, *, until_closed: bool = False) -> RawReply:
    received = b""
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return RawReply(received, closed=False)
        except OSError:
            return RawReply(received, closed=True)  # reset
        if not chunk:
            return RawReply(received, closed=True)
        received += chunk
        reply = RawReply(received, closed=False)
        length = reply.headers.get("content-length")
        complete = length is not None and len(reply.body) >= int(length)
        if complete and b"\r\n\r\n" in received and not until_closed:
            return reply
