"""`llm-gateway` command line: serve | reload | check-config | hash-key | usage | fake-upstream |
demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from pydantic import AnyHttpUrl

from gateway import reload, server, supervisor
from gateway.app import build_app
from gateway.config import ConfigError, ConfigFile, GatewayConfig, TeamKey, read_config_file
from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import Behavior, FakeUpstream, serve
from gateway.usage import render
from gateway.usage.audit_files import AuditFileError, check_readable
from gateway.usage.report import GROUPINGS, NoSecretsNeeded, UsageReport, Window, moment, prices_of

# Signals a single process holds while it starts (see `_serve`).
_HELD_WHILE_STARTING = {signal.SIGHUP, signal.SIGUSR1}

# Package data (gateway/data/), so that `demo` works from an installed wheel as from a
# checkout: in the repository these are symlinks to examples/ and policies/.
DEMO_CONFIG = Path(__file__).resolve().parent / "data" / "examples" / "demo.yaml"
DEMO_TEAM_KEY = "gw-demo-key-for-local-use-only"
DEMO_UPSTREAM_KEY_ENV = "DEMO_UPSTREAM_KEY"
DEMO_FAKE_PORT = 9100


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--config", required=True, type=Path)
    serve_cmd.add_argument("--host", help="overrides server.host")
    serve_cmd.add_argument("--port", type=int, help="overrides server.port")
    serve_cmd.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes serving the port (default 1; auto: one per CPU); more than "
        "one needs rate_limits.redis_url",
    )
    serve_cmd.add_argument(
        "--pid-file",
        type=Path,
        help=f"where to write the process id, for `reload` (default: {reload.default_pid_file()})",
    )

    reload_cmd = commands.add_parser(
        "reload", help="make the running gateway read its configuration again (SIGHUP)"
    )
    reload_cmd.add_argument(
        "--pid-file",
        type=Path,
        default=reload.default_pid_file(),
        help="the pid file `serve` wrote (default: %(default)s)",
    )

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", type=Path)

    hash_cmd = commands.add_parser(
        "hash-key", help="make a new team key and its hash for the config"
    )
    hash_cmd.add_argument(
        "--not-after",
        help="the last day (2025-03-31, UTC) or moment (2025-03-31T12:00:00Z) the key works",
    )

    usage = commands.add_parser(
        "usage", help="what each team or model used (and cost), from audit files"
    )
    usage.add_argument(
        "--audit",
        required=True,
        nargs="+",
        type=Path,
        metavar="FILE",
        help="audit files (audit.path and its rotations, gzip/bzip2/xz too), any order",
    )
    usage.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="the first moment counted (ISO 8601: 2025-03-01 or 2025-03-01T12:00:00Z; UTC "
        "unless it says otherwise)",
    )
    usage.add_argument(
        "--until", type=_moment, metavar="TIME", help="the first moment no longer counted"
    )
    usage.add_argument(
        "--by",
        choices=list(GROUPINGS),
        default="team",
        metavar="|".join(GROUPINGS),
        help="one row per team (the default), model, or both",
    )
    usage.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="default: table"
    )
    usage.add_argument(
        "--config",
        type=Path,
        help="the gateway's configuration, for models.<name>.price (no upstream key needed); "
        "without it, no cost column",
    )

    fake = commands.add_parser("fake-upstream", help="run the fake OpenAI-compatible upstream")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=DEMO_FAKE_PORT)
    fake.add_argument("--delay", type=float, default=0.0, help="seconds between stream events")
    fake.add_argument("--behavior", default="", help="default fault, e.g. 'status=503'")
    fake.add_argument("--api-key", help="require this upstream key")

    demo = commands.add_parser("demo", help="the gateway on the demo config with a fake upstream")
    demo.add_argument("--port", type=int, help="overrides server.port of the demo config")
    demo.add_argument(
        "--upstream-port",
        type=int,
        default=DEMO_FAKE_PORT,
        help=f"port of the fake upstream on 127.0.0.1 (default {DEMO_FAKE_PORT})",
    )

    args = parser.parse_args(argv)
    run: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": _serve,
        "reload": _reload,
        "check-config": _check_config,
        "hash-key": _hash_key,
        "usage": _usage,
        "fake-upstream": _fake_upstream,
        "demo": _demo,
    }
    return run[args.command](args)


def _load_or_explain(path: Path) -> GatewayConfig | None:
    source = _read_or_explain(path)
    return None if source is None else source.config


def _read_or_explain(path: Path, environ: Mapping[str, str] | None = None) -> ConfigFile | None:
    try:
        return read_config_file(path, environ)
    except ConfigError as error:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_explain(args.config)
    if config is None:
        return 2
    print(
        f"{args.config}: ok ({len(config.upstreams)} upstreams, {len(config.models)} models, "
        f"{len(config.teams)} teams)"
    )
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    key = "gw-" + secrets.token_urlsafe(32)
    digest = hash_key(key)
    entry = f"- {digest}"
    if args.not_after is not None:
        try:
            # The config's own reading of it, so that what is printed is what it accepts.
            expiring = TeamKey(hash=digest, not_after=args.not_after)
        except ValueError:
            print(
                "--not-after: expected a date (2025-03-31) or a date and time "
                "(2025-03-31T12:00:00Z)",
                file=sys.stderr,
            )
            return 2
        assert expiring.not_after is not None and expiring.refused_from is not None
        if expiring.refused_from <= datetime.now(UTC):
            print("--not-after: already past; the key would never work", file=sys.stderr)
            return 2
        entry = f"- {{hash: {digest}, not_after: {expiring.not_after.isoformat()}}}"
    print(f"key:  {key}")
    print(f"hash: {digest}")
    print(f"yaml: {entry}")
    print(
        "Give the key to the team; paste only the yaml line into teams.<name>.key_hashes, "
        "then `llm-gateway reload`.",
        file=sys.stderr,
    )
    return 0


def _moment(text: str) -> datetime:
    try:
        return moment(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an ISO 8601 date or time, e.g. 2025-03-01 or 2025-03-01T12:00:00Z"
        ) from None


def _usage(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.until <= args.since:
        print("llm-gateway usage: --until must be later than --since", file=sys.stderr)
        return 2
    prices = None
    if args.config is not None:
        source = _read_or_explain(args.config, NoSecretsNeeded())
        if source is None:
            return 2
        prices = prices_of(source.config)
    files: dict[tuple[int, int], Path] = {}
    try:  # every file before any is read: a typo in the last one costs no wait
        for path in args.audit:
            first = files.setdefault(check_readable(path), path)
            if first is not path:
                print(f"llm-gateway usage: {path} is {first}; read once", file=sys.stderr)
    except AuditFileError as error:
        print(f"llm-gateway usage: --audit {error}", file=sys.stderr)
        return 2
    report = UsageReport(GROUPINGS[args.by], Window(args.since, args.until))
    for path in files.values():
        report.read(path)
    show = {"table": render.as_table, "csv": render.as_csv, "json": render.as_json}
    sys.stdout.write(show[args.format](report, prices))
    sys.stdout.flush()  # the report before the summary, when both go to one terminal
    if args.format != "json":
        print(render.summary(report), file=sys.stderr)
    # An incomplete report (a compressed file cut short) is printed, and said to be.
    return 1 if report.problems else 0


def _workers(text: str) -> int:
    try:
        return supervisor.parse_workers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _serve(args: argparse.Namespace) -> int:
    source = _read_or_explain(args.config)
    if source is None:
        return 2
    config = source.config
    if args.workers > 1:
        port = args.port if args.port is not None else config.server.port
        problem = supervisor.refusal(config, args.workers, port)
        if problem is not None:
            print(f"{args.config}: {problem}", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as on_exit:
        # The pid file is there for SIGHUP and SIGUSR1 (logrotate's postrotate), whose
        # default action ends a process: one process holds them from before the file is
        # written until its handlers are in place (the supervisor does it for workers).
        held = None
        if args.workers == 1:
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_WHILE_STARTING)
        # One pid file per replica: the parent's, when there are workers (it forwards the
        # SIGHUP to each of them).
        if not _write_pid_file(on_exit, args.pid_file):
            return 2
        if args.workers > 1:
            host = args.host or config.server.host
            port = args.port if args.port is not None else config.server.port
            return supervisor.run(source, args.workers, host, port, loop_factory=_new_loop)
        assert held is not None
        _run(build_app(source), config, args.host, args.port, held)
    return 0


def _write_pid_file(on_exit: contextlib.ExitStack, asked: Path | None) -> bool:
    """The pid file for `reload`, removed on exit. One asked for must be written; the
    default is skipped, with a warning, when it cannot be."""
    path = asked or reload.default_pid_file()
    try:
        on_exit.enter_context(reload.pid_file(path))
    except OSError as exc:
        if asked is not None:
            print(f"--pid-file {path}: cannot write it: {exc.strerror}", file=sys.stderr)
            return False
        print(
            f"no pid file ({path}: {exc.strerror}): `reload` will not find this gateway",
            file=sys.stderr,
        )
    return True


def _reload(args: argparse.Namespace) -> int:
    try:
        pid = reload.signal_reload(args.pid_file)
    except reload.ReloadSignalError as error:
        print(f"llm-gateway reload: {error}", file=sys.stderr)
        return 1
    print(
        f"sent SIGHUP to process {pid}; its log says how the reload ended "
        "(config_reloaded, or config_reload_refused with every problem), /readyz shows "
        "config_generation"
    )
    return 0


def _run(
    app: web.Application,
    config: GatewayConfig,
    host: str | None,
    port: int | None,
    held: set[signal.Signals | int] | None = None,
) -> None:
    """Serves `app`; with `held`, the signal mask before start-up held some signals (see
    `_serve`), restored once the handlers are in place."""
    server.serve(
        app,
        host=host or config.server.host,
        port=port if port is not None else config.server.port,
        loop_factory=_new_loop,
        listening=None if held is None else lambda: _restore(held),
    )


def _restore(mask: set[signal.Signals | int]) -> None:
    """The signals held while the process started are delivered now, to its handlers."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _fake_upstream(args: argparse.Namespace) -> int:
    upstream = FakeUpstream(default=Behavior.parse(args.behavior, Behavior(delay=args.delay)))
    upstream.api_key = args.api_key
    web.run_app(
        upstream.app(),
        host=args.host,
        port=args.port,
        handler_cancellation=True,
        access_log=None,
        loop=_new_loop(),
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    upstream_key = os.environ.setdefault(DEMO_UPSTREAM_KEY_ENV, "demo-upstream-key")
    config = _load_or_explain(DEMO_CONFIG)
    if config is None:
        return 2
    config = _retarget_demo_upstreams(config, args.upstream_port)
    upstream = FakeUpstream(default=Behavior(delay=0.02), api_key=upstream_key)

    async def fake_upstream(app: web.Application) -> AsyncIterator[None]:
        runner = await serve("127.0.0.1", args.upstream_port, upstream)
        yield
        await runner.cleanup()

    app = build_app(config)
    app.cleanup_ctx.insert(0, fake_upstream)
    port = args.port if args.port is not None else config.server.port
    print(
        f"llm-gateway demo on http://{config.server.host}:{port}/v1 "
        f"(fake upstream on 127.0.0.1:{args.upstream_port}); team key: {DEMO_TEAM_KEY}\n"
        "Ctrl-C stops it.",
        file=sys.stderr,
        flush=True,
    )
    _run(app, config, None, port)
    return 0


def _retarget_demo_upstreams(config: GatewayConfig, port: int) -> GatewayConfig:
    """The demo config with its upstreams on the fake upstream's `port` (the file says
    DEMO_FAKE_PORT), so that a second demo, or a test, can run beside a first one."""
    if port == DEMO_FAKE_PORT:
        return config
    upstreams = {
        name: upstream.model_copy(
            update={
                "base_url": AnyHttpUrl.build(
                    scheme=upstream.base_url.scheme,
                    host=upstream.base_url.host or "127.0.0.1",
                    port=port,
                    path=(upstream.base_url.path or "").lstrip("/"),
                )
            }
        )
        for name, upstream in config.upstreams.items()
    }
    return config.model_copy(update={"upstreams": upstreams})


if __name__ == "__main__":
    sys.exit(main())
