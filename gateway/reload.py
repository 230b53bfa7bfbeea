"""Hot reload: SIGHUP (or `llm-gateway reload`, or `await reload(app)`) reads the
configuration file and its policy files again and, when they are valid, puts a new
generation of the request paths in force for new requests, while every request already
running finishes on the generation it started with. Nothing is dropped: connections, the
listener and requests in flight are not touched.

**The holder.** An aiohttp application takes no new state once it runs, and its routes are
fixed; so the routes are added once, and their handlers read the paths in force from one
mutable holder (`PATHS`, a `PathsHolder`) whose `current` is a `Paths`: one generation's
three pipelines (chat completions, the model list, one model), the configuration they were
built from, its number and its file's SHA-256. A reload replaces `current` whole, with one
assignment on the event loop. A handler reads `current` once, when its request starts, and
runs that generation's pipeline to its end: the request's team and key, route and upstream
model names, policy, limits and upstream timeouts are that generation's, even when the
stream it relays outlives several reloads. An old generation is freed with its last
request.

**What a reload rebuilds** (everything the stages derive from the configuration, see
`app.build_paths`): the teams' keys and their expiry, the routes (models, aliases, upstream
model names, HIPAA views), the teams' composed policies (the policy files are read again),
the rate limits of teams and models with `failure_mode` and `default_max_tokens`, the
upstreams' endpoints (dialect, key variable, timeouts, `ca_file`, `hipaa_eligible`), the
retry settings, the health thresholds, the safety model's wiring and `security`.

**What survives** (`SharedParts`, one per process, handed to every generation): the
upstream connections kept alive (`upstream.http1`); each upstream's connection pool (its slots
in use and its waiters; its `pool_timeout` follows the new configuration); passive health
(each upstream's failures, ejection and requests in flight; new thresholds and models apply
at once); the rate-limit backend (the in-process buckets and leases, or the Redis
connection) and the rate-limit stage's unconfirmed settlements (a request admitted under
one generation settles into the queue the next generation's admissions carry); the retry
budget (its counts; its bounds follow the configuration); failed-authentication counts and
blocks; metrics; background tasks; the live streams a shutdown would end; the loggers and
the audit trail; the key expiry log (an expiry is logged once per process).

**What needs a restart** (`restart_needed`): settings read once, by those surviving parts
or by the process itself: every `server.*` setting (the listener and its limits, logs, the
audit path); `rate_limits.redis_url`, `redis_timeout_ms`, `redis_retry_interval_s`,
`key_prefix`, `warn_interval_s`, `slices` and `slice_ttl_ms`; every `auth_failures.*` and
`tracing.*` setting (the exporter and its thread live with the process); the set of
upstreams (adding or removing one); an upstream's `base_url`, `max_connections` (its pool
and its health are its address's) and `max_in_flight` (the capacity its calls hold and
wait for). A file that changes any of them is refused whole, with result
`restart_required` and one line naming each such field; the configuration in force stays.
Nothing is applied in part, and nothing is ignored silently.

**How.** The file and the policy files are read, validated (the checks and messages of
`check-config`), compared with the configuration in force and built into a new generation
in a thread, off the event loop. Then, on the loop, the shared parts are fitted to it
(`adopt`) and the holder swapped, with no await in between. Reloads run one at a time; a
signal that arrives while one is waiting to start is merged into it (it reads the file as
it is then). Results: `ok`; `unchanged` (the same bytes and the same policies: nothing to
do); `invalid` (one log line lists every problem); `restart_required`; `failed` (a bug
while building, logged with where it failed). Each is counted in
`llm_gateway_config_reloads_total{result}`; `llm_gateway_config_generation` and /readyz
show the generation in force.

**Who triggers it.** SIGHUP: `server.py` installs the handler in every serving process, so
a supervisor that forwards SIGHUP to its workers has each of them reload itself.
`llm-gateway reload` sends SIGHUP to the process named in the pid file `serve` writes
(`PidFile`, `signal_reload`). Code: `await reload(app)`, or `request_reload(app)` from
synchronous code (a signal handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.auth_failures import AuthFailureLimit
from gateway.config import ConfigError, ConfigFile, GatewayConfig, read_config_file
from gateway.limiter.base import LimiterBackend
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import where_it_failed
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.stages.ratelimit import Settlements
from gateway.stages.relay import LiveStreams
from gateway.tasks import BackgroundTasks
from gateway.teams import KeyExpiryLog, TeamKey
from gateway.upstream.capacity import Capacity
from gateway.upstream.health import HealthBook
from gateway.upstream.http1 import Connections
from gateway.upstream.pool import ConnectionPool
from gateway.upstream.retry import RetryBudget

if TYPE_CHECKING:
    from gateway.observability.tracing import Tracing

OK = "ok"
UNCHANGED = "unchanged"
INVALID = "invalid"
RESTART_REQUIRED = "restart_required"
FAILED = "failed"
RESULTS = (OK, UNCHANGED, INVALID, RESTART_REQUIRED, FAILED)

# Sections whose every setting is read once by a part of the process that a reload keeps.
_RESTART_ONLY_SECTIONS = ("server", "auth_failures", "tracing")
# The same, setting by setting: the rate-limit backend and the failure counter are built
# once; the rest of `rate_limits` is the rate-limit stage's, rebuilt with it.
_RESTART_ONLY_RATE_LIMITS = (
    "redis_url",
    "redis_timeout_ms",
    "redis_retry_interval_s",
    "key_prefix",
    "warn_interval_s",
    "slices",
    "slice_ttl_ms",
)
# The audit file is opened once (and again on SIGUSR1); `audit.on_failure` reloads.
_RESTART_ONLY_AUDIT = ("path",)
# An upstream's address and pool size: its pool, its health and the process's open-files
# budget are sized for them.
_RESTART_ONLY_UPSTREAM = ("base_url", "max_connections", "max_in_flight")


@dataclass(frozen=True, slots=True, eq=False)
class SharedParts:
    """What every generation of the paths shares, for the life of the process (see the
    module docstring). Made at start-up, once the event loop runs (the connections need it)."""

    log: FilteringBoundLogger
    audit_log: AuditTrail
    metrics: GatewayMetrics
    tasks: BackgroundTasks
    live_streams: LiveStreams
    limiter: LimiterBackend
    health: HealthBook
    auth_failures: AuthFailureLimit
    settlements: Settlements
    retry_budget: RetryBudget
    pools: dict[str, ConnectionPool]
    capacity: Capacity
    connections: Connections
    key_expiry: KeyExpiryLog
    # None when tracing is off (see `observability.tracing`).
    tracing: Tracing | None = None


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Paths:
    """One generation of the request paths, and what it was built from. Referenced by the
    holder while in force, then only by the requests still running on it."""

    generation: int
    config: GatewayConfig
    # Of the configuration file's bytes; None for a configuration built in memory.
    sha256: str | None
    chat: Pipeline
    model_list: Pipeline
    model_info: Pipeline
    keys: tuple[TeamKey, ...]


class PathsHolder:
    """The paths in force: one reference, replaced whole by a reload. Set at start-up."""

    __slots__ = ("current",)

    current: Paths

    def peek(self) -> Paths | None:
        """`current`, or None before start-up has set it."""
        return getattr(self, "current", None)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    result: str  # one of RESULTS
    # The generation in force afterwards.
    generation: int
    # For `invalid` and `restart_required`: each problem, as `field.path: what`.
    problems: tuple[str, ...] = ()


# Builds a generation from a configuration, its number and its file's hash; must not
# change any shared part (it runs off the event loop).
Build = Callable[[GatewayConfig, int, str | None], Paths]
# Fits the shared parts to a generation about to be put in force (on the event loop).
Adopt = Callable[[Paths], None]


class Reloader:
    def __init__(
        self,
        holder: PathsHolder,
        source: ConfigFile | None,
        metrics: GatewayMetrics,
        log: FilteringBoundLogger,
        tasks: BackgroundTasks,
    ) -> None:
        self.holder = holder
        self._source = source
        self._metrics = metrics
        self._log = log
        self._tasks = tasks
        self._build: Build | None = None
        self._adopt: Adopt | None = None
        self._started = asyncio.Event()
        self._lock = asyncio.Lock()
        # A reload is requested and has not started reading the file yet.
        self._queued = False
        self.last: ReloadResult | None = None

    def start(self, config: GatewayConfig, build: Build, adopt: Adopt) -> Paths:
        """Puts the first generation, of `config`, in force (at start-up, on the event
        loop) and enables reloads; `build` and `adopt` make and fit every generation."""
        self._build, self._adopt = build, adopt
        sha256 = None if self._source is None else self._source.sha256
        return self._put_in_force(build(config, 1, sha256))

    def request(self, trigger: str) -> None:
        """Asks for a reload without waiting for it (from a signal handler); requests made
        before the queued one starts reading are merged into it."""
        self._log.info("config_reload_requested", trigger=trigger)
        if self._queued:
            return
        self._queued = True
        self._tasks.spawn(self._requested(), name="config-reload")

    async def _requested(self) -> None:
        await self.reload()

    async def reload(self) -> ReloadResult:
        """Reads the configuration file again and puts it in force if it is valid and
        needs no restart; the result says what happened (and is logged and counted)."""
        await self._started.wait()  # a reload asked for during start-up runs right after it
        async with self._lock:
            self._queued = False
            current = self.holder.current
            started = time.perf_counter()
            try:
                prepared = await asyncio.to_thread(self._prepare, current)
                if isinstance(prepared, Paths):
                    self._put_in_force(prepared)
            except Exception as exc:
                self._log.error(
                    "config_reload_failed",
                    generation=current.generation,
                    where=where_it_failed(exc),
                )
                return self._counted(ReloadResult(FAILED, current.generation))
            took_ms = round((time.perf_counter() - started) * 1000, 3)
            if isinstance(prepared, ReloadResult):
                self._report_kept(prepared, current, took_ms)
                return self._counted(prepared)
            self._log.info(
                "config_reloaded",
                generation=prepared.generation,
                previous_generation=current.generation,
                sha256=prepared.sha256,
                file=str(self._source.path) if self._source else None,
                took_ms=took_ms,
            )
            return self._counted(ReloadResult(OK, prepared.generation))

    def _prepare(self, current: Paths) -> Paths | ReloadResult:
        """In a thread: the new generation, or why there is none."""
        if self._source is None:
            return ReloadResult(
                INVALID,
                current.generation,
                ("(no file): this gateway was started from a configuration in memory",),
            )
        try:
            new = read_config_file(self._source.path)
        except ConfigError as error:
            return ReloadResult(INVALID, current.generation, tuple(error.problems))
        if new.sha256 == current.sha256 and new.config == current.config:
            return ReloadResult(UNCHANGED, current.generation)
        problems = restart_needed(current.config, new.config)
        if problems:
            return ReloadResult(RESTART_REQUIRED, current.generation, tuple(problems))
        assert self._build is not None
        return self._build(new.config, current.generation + 1, new.sha256)

    def _put_in_force(self, paths: Paths) -> Paths:
        """On the event loop, with no await: the shared parts fitted, then the swap."""
        assert self._adopt is not None
        self._adopt(paths)
        self.holder.current = paths
        self._metrics.config_generation.set(paths.generation)
        self._started.set()
        return paths

    def _report_kept(self, result: ReloadResult, current: Paths, took_ms: float) -> None:
        """The configuration in force stays: the file is the same, or refused."""
        if result.result == UNCHANGED:
            self._log.info("config_unchanged", generation=current.generation, sha256=current.sha256)
            return
        self._log.error(
            "config_reload_refused",
            result=result.result,
            file=str(self._source.path) if self._source else None,
            generation=current.generation,
            problems=list(result.problems),
            took_ms=took_ms,
        )

    def _counted(self, result: ReloadResult) -> ReloadResult:
        self._metrics.config_reloads.labels(result.result).inc()
        self.last = result
        return result


RELOADER = web.AppKey("reloader", Reloader)
PATHS = web.AppKey("paths", PathsHolder)
# Set at start-up (the upstream connections need the running loop).
SHARED = web.AppKey("shared", SharedParts)


async def reload(app: web.Application) -> ReloadResult:
    """The hook: reload `app`'s configuration now; returns once it is in force or
    refused."""
    return await app[RELOADER].reload()


def request_reload(app: web.Application, trigger: str = "SIGHUP") -> None:
    """The hook for synchronous code (a signal handler): reload soon, without waiting."""
    app[RELOADER].request(trigger)


def restart_needed(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The settings `new` changes that only a restart can apply, as `path: why` lines
    (names only: a value such as a Redis URL may hold a password)."""
    problems: list[str] = []
    why = "changes only with a restart"
    for section in _RESTART_ONLY_SECTIONS:
        old_part, new_part = getattr(running, section), getattr(new, section)
        for name in type(old_part).model_fields:
            if getattr(old_part, name) != getattr(new_part, name):
                problems.append(f"{section}.{name}: {why}")
    for name in _RESTART_ONLY_RATE_LIMITS:
        if getattr(running.rate_limits, name) != getattr(new.rate_limits, name):
            problems.append(f"rate_limits.{name}: {why}")
    for name in _RESTART_ONLY_AUDIT:
        if getattr(running.audit, name) != getattr(new.audit, name):
            problems.append(f"audit.{name}: {why}")
    for upstream in sorted(set(new.upstreams) - set(running.upstreams)):
        problems.append(f"upstreams.{upstream}: added; upstreams are added only with a restart")
    for upstream in sorted(set(running.upstreams) - set(new.upstreams)):
        problems.append(f"upstreams.{upstream}: removed; upstreams are removed only with a restart")
    for upstream in sorted(set(running.upstreams) & set(new.upstreams)):
        old_up, new_up = running.upstreams[upstream], new.upstreams[upstream]
        for name in _RESTART_ONLY_UPSTREAM:
            if getattr(old_up, name) != getattr(new_up, name):
                problems.append(f"upstreams.{upstream}.{name}: {why}")
    return problems


# ---------------------------------------------------------------- the pid file


def default_pid_file() -> Path:
    """Where `serve` writes its pid and `reload` reads it, unless told otherwise: the
    user's runtime directory ($XDG_RUNTIME_DIR, private to the user), else
    `llm-gateway-<uid>.pid` in the temporary directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "llm-gateway.pid"
    return Path(tempfile.gettempdir()) / f"llm-gateway-{os.getuid()}.pid"


@contextlib.contextmanager
def pid_file(path: Path) -> Iterator[None]:
    """Writes this process's pid to `path` for the duration; removes it afterwards unless
    another process has written its own there since. Raises OSError when it cannot be
    written."""
    pid = os.getpid()
    # Written whole under a temporary name, then renamed: a reader never sees half a pid,
    # and a name planted in a shared directory is replaced, never written through.
    handle, temporary = tempfile.mkstemp(prefix=".llm-gateway-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(f"{pid}\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text().strip()) == pid:
                path.unlink()


class ReloadSignalError(Exception):
    """Why `llm-gateway reload` could not signal a gateway (a sentence for the operator)."""


def signal_reload(path: Path) -> int:
    """Sends SIGHUP to the gateway whose pid `path` holds; returns the pid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ReloadSignalError(
            f"no pid file at {path}: is the gateway running? (`serve --pid-file` sets where "
            "it writes one)"
        ) from None
    except OSError as exc:
        raise ReloadSignalError(f"cannot read {path}: {exc.strerror}") from None
    try:
        pid = int(text.strip())
    except ValueError:
        raise ReloadSignalError(f"{path} does not hold a process id") from None
    if pid <= 1:
        raise ReloadSignalError(f"{path} does not hold a process id")
    if not _is_gateway(pid):
        raise ReloadSignalError(
            f"process {pid} (from {path}) is not a running llm-gateway: a stale pid file?"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadSignalError(f"no process {pid} (from {path}): a stale pid file?") from None
    except PermissionError:
        raise ReloadSignalError(f"not allowed to signal process {pid} (from {path})") from None
    return pid


def _is_gateway(pid: int) -> bool:
    """Does `pid` run the gateway? A stale pid file may name a process that reused the pid,
    and SIGHUP ends most processes. Where /proc cannot tell, the pid file is trusted."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no such process, or no /proc at all
    except OSError:
        return True
    return b"gateway" in command
