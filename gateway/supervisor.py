"""Worker processes: `llm-gateway serve --workers N` (N > 1) runs N copies of the gateway on
one port, each a process with its own event loop, under a supervising parent. With N = 1
there is no parent: `serve` is the single process it always was (`server.py`).

Owns the parent and what it decides:
- start-up: refuses what N processes cannot do (the in-process rate limiter, which would
  give every team N times its limits; port 0, which would give each worker its own port),
  and a port something already listens on; then forks the workers.
- the workers: forked from the parent once the configuration is loaded (no re-import,
  no re-parse: a worker starts in the time its app does), each with an id, 1..N, that its
  log lines carry (`worker`) and its answers name (`x-gateway-worker`). A replacement
  takes the id of the worker it replaces, so ids, and the `worker` label of the metrics,
  stay 1..N however often workers die.
- a worker that dies when not told to is restarted (`worker_died`, then `worker_started`;
  `llm_gateway_worker_restarts_total{worker}`), at once the first time and after a
  backoff that doubles (0.25 s up to 30 s) while its replacements keep dying within 10 s
  of their start, so a worker that cannot run does not become a fork loop. A worker of the
  first generation that fails before it listens (its app cannot start) stops the whole
  replica with exit code 1: what fails at the first start fails at every restart.
- signals: SIGTERM, SIGINT and SIGQUIT are forwarded to every worker, which drains as a
  single process does; no worker is restarted any more; the parent exits once all have, 0
  if every one exited 0 (a worker still running `server.shutdown_timeout` + 11 s later is
  killed, exit code 1). SIGHUP is forwarded to every worker, which reloads as a single
  process does, and the parent reads the file again for the workers it starts later (a
  replacement serves the reloaded configuration, not the first one). SIGUSR1 is forwarded
  to every worker, each of which opens the audit file again (logrotate). The signals a
  single process logs and ignores are logged and ignored by the parent too. The parent takes its
  signals synchronously (blocked, and read with sigtimedwait), so a signal can never
  interrupt it half-way through a fork or a bookkeeping step; a worker keeps them blocked
  until it listens, so that one sent while it starts waits for its handlers instead of
  killing it. A worker gets SIGTERM (a drain) if the parent dies (PR_SET_PDEATHSIG): none
  outlives it holding the port.

How the port is shared: every worker binds its own listening socket with SO_REUSEPORT,
and the kernel spreads new connections over the sockets by a hash of their addresses.
The alternative, one socket bound by the parent and inherited by every worker, has one
accept queue that every worker's event loop drains greedily (asyncio and uvloop accept
until the queue is empty), so a burst of connects, such as a load balancer opening its
pool, lands on whichever worker woke first, and keep-alive connections stay where they
landed. With SO_REUSEPORT each worker takes an even share, and a dead worker's socket
leaves the group with it: new connections go to the living until the replacement binds,
which it does only once its app has started. The costs: connections that had completed
their handshake but were not accepted yet when a worker died are reset (as are those of a
draining worker's queue; Linux 5.14+ hands them to a sibling instead with
`net.ipv4.tcp_migrate_req = 1`); and any process of the same user could join the port,
which is why the parent first checks that nothing listens there (a second gateway started
on the same port by mistake would otherwise split the traffic silently). Linux only.

Metrics: see `observability/replica.py` (counts in memory-mapped files, one set per
worker, in a directory the parent makes under $TMPDIR and removes at exit).

Per worker, not per replica: `server.max_connections` (the replica holds N times it), the
open-files limit, the upstream connection pools (`upstreams.*.max_connections`: N times as
many connections to each upstream), passive health (each worker ejects an upstream on its
own failures), the retry budget, and the count of failed authentications that Redis
could not take (counted in the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter
from structlog.typing import FilteringBoundLogger

from gateway import server
from gateway.app import build_app
from gateway.appkeys import METRICS
from gateway.config import ConfigError, ConfigFile, GatewayConfig, read_config_file
from gateway.observability.logs import make_logger, where_it_failed
from gateway.observability.metrics import PREFIX
from gateway.observability.replica import (
    SUPERVISOR,
    ReplicaMetrics,
    forget_worker,
    keep_counts_in,
)
from gateway.reload import restart_needed

# Exit code of a worker whose app failed before it listened.
BOOT_FAILED = 3
# A worker that ran this long was not crash-looping: its next replacement starts at once.
STABLE_S = 10.0
# Backoff after the second quick death in a row, doubled each further one, up to the max.
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 30.0
# After the drain deadline, what the workers get to finish their cleanup before SIGKILL:
# aiohttp's unwinding (1 s), the background work and the limiter (about 5 s), margin.
STOP_MARGIN_S = 11.0
# The longest the parent sleeps with nothing due (it wakes for every signal anyway).
_IDLE_WAIT_S = 60.0
_PR_SET_PDEATHSIG = 1

# What the parent waits for; blocked, so that only sigtimedwait takes them.
WATCHED: frozenset[int] = frozenset(
    {
        signal.SIGCHLD,
        signal.SIGHUP,
        server.REOPEN_SIGNAL,
        *server.STOP_SIGNALS,
        *server.IGNORED_SIGNALS,
    }
)


def parse_workers(text: str) -> int:
    """`--workers`: a count of at least 1, or `auto` for the CPUs this process may use."""
    if text == "auto":
        return cpu_count()
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"expected a number of processes (1 or more) or 'auto', not {text!r}")
    return count


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity), fewer under a container's CPU quota
    (what a Kubernetes CPU limit becomes: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`): a
    pod limited to 2 CPUs on a 64-core node gets 2 workers, not 64."""
    count = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(Path("/sys/fs/cgroup"))
    return count if quota is None else max(1, min(count, math.ceil(quota)))


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time the container's cgroup may use per period, None if unlimited or
    not known."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((root / v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((root / v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 else quota_us / period_us
    return None


def refusal(config: GatewayConfig, workers: int, port: int) -> str | None:
    """Why `config` cannot be served by `workers` processes, if it cannot."""
    if config.rate_limits.redis_url is None:
        return (
            f"--workers {workers} needs rate_limits.redis_url: without it each worker process "
            f"would keep rate limits of its own and every team would get {workers} times its "
            "limits (and failed authentications would be counted per process). Set "
            "rate_limits.redis_url to a Redis the workers share, or serve with --workers 1."
        )
    if port == 0:
        return (
            f"--workers {workers} needs a fixed port (server.port or --port): port 0 would "
            "give every worker a port of its own."
        )
    return None


def listen_problem(host: str, port: int) -> str | None:
    """Why the workers could not listen on host:port alone, if something already listens
    there: bound with SO_REUSEPORT, they would share it with that listener (another gateway
    of the same user, say) without an error. Probed by binding it without SO_REUSEPORT
    (SO_REUSEADDR, as asyncio, so that connections in TIME_WAIT do not count)."""
    probes: list[socket.socket] = []
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in addresses:
            probe = socket.socket(family, kind, proto)
            probes.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
    except OSError as error:
        return f"cannot listen on {host}:{port}: {error.strerror or error}"
    finally:
        for probe in probes:
            probe.close()
    return None


def restart_delay(quick_deaths: int) -> float:
    """How long after its death a worker is replaced, when it and the replacements before
    it died `quick_deaths` times in a row within STABLE_S of their start."""
    if quick_deaths <= 1:
        return 0.0
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** (quick_deaths - 2))


def run(
    source: ConfigFile,
    workers: int,
    host: str,
    port: int,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> int:
    """Serves the configuration `source` was read as on host:port with `workers` worker
    processes until a stop signal; returns the exit code. `refusal()` must have found
    nothing to refuse."""
    log = make_logger(source.config.server)
    problem = listen_problem(host, port)
    if problem is not None:
        log.error("workers_not_started", problem=problem)
        return 1
    directory = Path(tempfile.mkdtemp(prefix="llm-gateway-metrics-"))
    try:
        return Supervisor(source, workers, host, port, loop_factory, directory, log).run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Slot:
    """One of the N places a worker runs in; its id outlives its processes."""

    worker: str
    pid: int | None = None
    started: float = 0.0
    starts: int = 0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """The parent: starts a worker in each slot, replaces those that die, forwards the
    signals, and returns the exit code once stopped (see the module docstring)."""

    def __init__(
        self,
        source: ConfigFile,
        workers: int,
        host: str,
        port: int,
        loop_factory: Callable[[], asyncio.AbstractEventLoop],
        directory: Path,
        log: FilteringBoundLogger,
    ) -> None:
        # What a worker started now serves: the file as the last SIGHUP found it, so that a
        # replacement for a worker that died after a reload does not bring back the old
        # configuration (each running worker reads the file itself on the SIGHUP; see
        # `reload`).
        self.source = source
        self.host = host
        self.port = port
        self.loop_factory = loop_factory
        self.directory = directory
        self.log = log
        self.slots = [_Slot(str(i)) for i in range(1, workers + 1)]
        self.stopping = False
        self.exit_code = 0
        self.kill_at = 0.0
        keep_counts_in(directory, SUPERVISOR)
        self.restarts = Counter(
            f"{PREFIX}_worker_restarts",
            "Worker processes started again after one died unexpectedly, by worker id.",
            ["worker"],
            registry=None,  # in the files only: every worker's scrape reads them
        )
        for slot in self.slots:
            self.restarts.labels(slot.worker)  # a series from the start, at 0
        self._mask: set[int] = set()

    @property
    def config(self) -> GatewayConfig:
        return self.source.config

    def run(self) -> int:
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        try:
            self.log.info(
                "workers_starting",
                workers=len(self.slots),
                host=self.host,
                port=self.port,
                metrics_dir=str(self.directory),
            )
            for slot in self.slots:
                self._start(slot)
            while not self.stopping or self._running():
                info = signal.sigtimedwait(WATCHED, self._wait())
                if info is None:
                    self._on_time()
                elif info.si_signo == signal.SIGCHLD:
                    self._reap()
                elif info.si_signo in server.STOP_SIGNALS:
                    self._stop(signal.Signals(info.si_signo))
                elif info.si_signo == signal.SIGHUP:
                    self._forward(signal.SIGHUP)
                    self._reread()
                elif info.si_signo == server.REOPEN_SIGNAL:
                    self._forward(server.REOPEN_SIGNAL)
                else:
                    self.log.warning("signal_ignored", signal=_name(info.si_signo))
            self.log.info("workers_stopped", exit_code=self.exit_code)
            return self.exit_code
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)

    def _running(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.pid is not None]

    def _wait(self) -> float:
        due = [self.kill_at] if self.stopping else []
        due += [s.restart_at for s in self.slots if s.restart_at is not None]
        return min(_IDLE_WAIT_S, max(0.0, min(due, default=math.inf) - time.monotonic()))

    def _on_time(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if now >= self.kill_at:
                for slot in self._running():
                    self.log.error("worker_killed_at_stop_deadline", worker=slot.worker)
                    _signal(slot, signal.SIGKILL)
                self.exit_code = 1
                self.kill_at = math.inf  # once: what is left is reaping them
            return
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)

    def _start(self, slot: _Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._worker(slot.worker, parent)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None
        slot.starts += 1
        if slot.starts > 1:
            self.restarts.labels(slot.worker).inc()
        self.log.info("worker_started", worker=slot.worker, pid=pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                slot.pid = None
                forget_worker(self.directory, slot.worker)
                self._exited(slot, pid, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, pid: int, code: int) -> None:
        how = {"exit_code": code} if code >= 0 else {"signal": _name(-code)}
        if self.stopping:
            self.log.info("worker_stopped", worker=slot.worker, pid=pid, **how)
            if code != 0:
                self.exit_code = 1
            return
        if code == BOOT_FAILED and slot.starts == 1:
            self.log.error("worker_failed_to_start", worker=slot.worker, pid=pid)
            self.exit_code = 1
            self._stop(signal.SIGTERM)
            return
        now = time.monotonic()
        ran = now - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if ran < STABLE_S else 1
        delay = restart_delay(slot.quick_deaths)
        slot.restart_at = now + delay
        self.log.warning(
            "worker_died",
            worker=slot.worker,
            pid=pid,
            **how,
            ran_s=round(ran, 3),
            restart_in_s=delay,
        )
        if delay == 0:
            self._start(slot)

    def _stop(self, sig: signal.Signals) -> None:
        if not self.stopping:
            self.stopping = True
            self.kill_at = time.monotonic() + self.config.server.shutdown_timeout + STOP_MARGIN_S
            for slot in self.slots:
                slot.restart_at = None
            self.log.info("stopping_workers", signal=sig.name)
        self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        running = self._running()
        for slot in running:
            _signal(slot, sig)
        self.log.info("signal_forwarded", signal=sig.name, workers=[s.worker for s in running])

    def _reread(self) -> None:
        """After a SIGHUP: the file again, for the workers started from now on, if the
        workers could put it in force (valid, and nothing that needs a restart changed);
        otherwise they keep the running one and so does the parent. Each worker logs the
        problems itself; the parent notes only which configuration it starts workers on."""
        try:
            new = read_config_file(self.source.path)
        except ConfigError as exc:
            self.log.warning("workers_config_kept", problems=len(exc.problems))
            return
        problems = restart_needed(self.config, new.config)
        if problems:
            self.log.warning("workers_config_kept", problems=len(problems))
            return
        self.source = new
        self.log.info("workers_config_reread", sha256=new.sha256)

    # ------------------------------------------------------------------ in the worker

    def _worker(self, worker: str, parent: int) -> int:
        """The body of a worker process (after fork): the gateway, as `serve` runs it, with
        this worker's id, its counts in the shared files, bound with SO_REUSEPORT."""
        listening = False

        def on_listening() -> None:
            nonlocal listening
            listening = True
            # The handlers are in place: signals sent while starting are delivered now.
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)

        log = make_logger(self.config.server).bind(worker=worker)
        try:
            if not _die_with(parent):
                return 1
            keep_counts_in(self.directory, worker)
            app = build_app(self.source, worker=worker)
            replica = ReplicaMetrics(self.directory, worker, app[METRICS].registry, log)
            app[METRICS].replica = replica
            app.cleanup_ctx.append(replica.publishing)
            server.serve(
                app,
                self.host,
                self.port,
                self.loop_factory,
                reuse_port=True,
                listening=on_listening,
            )
        except Exception as exc:
            log.error("worker_failed", where=where_it_failed(exc), listening=listening)
            return 1 if listening else BOOT_FAILED
        return 0


def _die_with(parent: int) -> bool:
    """Asks the kernel for SIGTERM when the parent dies; False if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent


def _signal(slot: _Slot, sig: signal.Signals) -> None:
    if slot.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.pid, sig)


def _name(number: int) -> str:
    if number in server.IGNORED_SIGNALS:
        return server.IGNORED_SIGNALS[number]
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
