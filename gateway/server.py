"""The gateway as a process: `serve()` runs the app the way `llm-gateway serve` does, with
its client connections handled by `connections.py`.

Owns what belongs to the process rather than to a connection:
- the open-files limit: the soft RLIMIT_NOFILE is raised to the hard limit at start-up,
  and `server.max_connections` lowered (with a warning) when the limit cannot hold it next
  to the upstream pools;
- signals: SIGTERM, SIGINT and SIGQUIT (nginx's graceful stop) stop accepting, let
  in-flight requests finish within `server.shutdown_timeout`, end the streams still
  running then with an error event that says so (see `stages.relay.LiveStreams`), and
  exit; SIGHUP reloads the configuration (see `reload`: in this process, so that each
  worker of a supervisor that forwards the signal reloads itself); SIGUSR1 opens the audit
  file again (logrotate's `postrotate`, see `observability.audit_trail`; each worker of a
  supervisor that forwards it reopens its own); SIGUSR2 and the other signals whose
  default action would end the process are logged and otherwise ignored, so that no
  stream is cut and no audit line lost.

With `serve --workers N` (supervisor.py) every worker process runs `serve()` on its own
event loop with its listening socket bound with SO_REUSEPORT, so the limits above (open
files, `server.max_connections`) are each worker's.
"""

from __future__ import annotations

import asyncio
import resource
import signal
from collections.abc import Callable

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.appkeys import AUDIT_TRAIL, CONFIG, LIVE_STREAMS, LOG, METRICS
from gateway.connections import RESERVED_FDS, ConnectionGuard, GatewayRunner
from gateway.reload import request_reload

# Signals that drain in-flight requests and end the process. The signals below would end
# it at once by default, cutting streams and losing their audit lines; they are logged and
# ignored (SIGUSR1, which would be one of them, reopens the audit file instead). Faults
# (SIGSEGV, SIGABRT, ...), resource limits (SIGXCPU, SIGXFSZ) and SIGKILL keep their
# default.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# logrotate's signal, by the convention of nginx and most daemons: open the log file again.
REOPEN_SIGNAL = signal.SIGUSR1
# Connections the kernel may hold completed but not yet accepted. aiohttp's default (128)
# overflows under a burst of connects: the kernel then drops handshakes, and clients wait
# seconds for retransmissions before the gateway even sees them (nginx uses 511; Linux caps
# it at net.core.somaxconn, 4096 on current kernels).
LISTEN_BACKLOG = 2048

# After the drain deadline has ended the streams, what the rest of the requests get to
# unwind (then aiohttp cancels them).
_UNWIND_S = 1.0

IGNORED_SIGNALS: dict[int, str] = {
    **{
        sig.value: sig.name
        for sig in (
            signal.SIGUSR2,
            signal.SIGALRM,
            signal.SIGVTALRM,
            signal.SIGPROF,
            signal.SIGIO,
            signal.SIGPWR,
            signal.SIGSTKFLT,
        )
    },
    # The real-time signals have no names of their own.
    **{n: f"SIGRTMIN+{n - signal.SIGRTMIN}" for n in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)},
}


def raise_open_files_limit(log: FilteringBoundLogger) -> int:
    """The soft RLIMIT_NOFILE raised to the hard limit (the soft default, often 1024, is
    far below what a proxy with thousands of connections needs); returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit is refused as a soft one; Linux's default ceiling (nr_open).
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    now = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            now = target
        except (ValueError, OSError):
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard)
    log.info("open_files_limit", soft_before=soft, hard=hard, soft=now)
    return now


def connection_cap(
    configured: int, open_files: int, upstream_connections: int, log: FilteringBoundLogger
) -> int:
    """`server.max_connections`, lowered if the open-files limit cannot hold it next to the
    upstream pools: a connection over the cap gets a clear 503, a descriptor short of the
    limit would fail an upstream call of an admitted request instead."""
    room = open_files - upstream_connections - RESERVED_FDS
    if configured <= room:
        return configured
    cap = max(1, room)
    log.warning(
        "max_connections_lowered",
        configured=configured,
        max_connections=cap,
        open_files_limit=open_files,
        upstream_connections=upstream_connections,
    )
    return cap


def serve(
    app: web.Application,
    host: str,
    port: int,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    *,
    reuse_port: bool = False,
    listening: Callable[[], None] | None = None,
) -> None:
    """Runs `app` on host:port until SIGTERM, SIGINT or SIGQUIT, then drains. A worker
    process binds with `reuse_port` (its siblings share the port) and is told by
    `listening` when it serves (its signal handlers are in place then)."""
    config, log = app[CONFIG], app[LOG]
    open_files = raise_open_files_limit(log)
    upstream_connections = sum(u.max_connections for u in config.upstreams.values())
    guard = ConnectionGuard(
        max_connections=connection_cap(
            config.server.max_connections, open_files, upstream_connections, log
        ),
        header_timeout_s=config.server.header_timeout_s,
        body_timeout_s=config.server.body_timeout_s,
        log=log,
        registry=app[METRICS].registry,
    )
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(app, guard, host, port, reuse_port, listening))
    finally:
        _cancel_remaining(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(
    app: web.Application,
    guard: ConnectionGuard,
    host: str,
    port: int,
    reuse_port: bool,
    listening: Callable[[], None] | None,
) -> None:
    config, log = app[CONFIG], app[LOG]
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[signal.Signals] = loop.create_future()

    def on_stop(sig: signal.Signals) -> None:
        if not stop.done():
            stop.set_result(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, request_reload, app, "SIGHUP")
    # On the loop, between two lines: the file is swapped with no line half-written.
    loop.add_signal_handler(REOPEN_SIGNAL, app[AUDIT_TRAIL].reopen)
    for number, name in IGNORED_SIGNALS.items():
        loop.add_signal_handler(number, _ignored, name, log)

    runner = GatewayRunner(
        app,
        guard,
        access_log=None,  # the gateway writes its own access line, without secrets
        handler_cancellation=True,  # a client that leaves cancels its upstream call
        # aiohttp's own deadline is a backstop: the streams end at the drain deadline
        # (below), and aiohttp waits it twice before cancelling a handler.
        shutdown_timeout=config.server.shutdown_timeout + _UNWIND_S,
        keepalive_timeout=config.server.keepalive_timeout_s,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port).start()
        log.info(
            "listening",
            host=host,
            port=port,
            max_connections=guard.max_connections,
            header_timeout_s=guard.header_timeout_s,
            body_timeout_s=guard.body_timeout_s,
            keepalive_timeout_s=config.server.keepalive_timeout_s,
        )
        if listening is not None:
            listening()
        sig = await stop
        log.info("shutting_down", signal=sig.name)
    finally:
        deadline = loop.call_later(config.server.shutdown_timeout, _end_streams, app)
        try:
            await runner.cleanup()
        finally:
            deadline.cancel()


def _end_streams(app: web.Application) -> None:
    ended = app[LIVE_STREAMS].cut_all()
    if ended:
        app[LOG].warning("streams_ended_at_drain_deadline", streams=ended)


def _ignored(name: str, log: FilteringBoundLogger) -> None:
    log.warning("signal_ignored", signal=name)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
