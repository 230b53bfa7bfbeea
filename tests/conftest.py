"""Shared fixtures: a real fake-upstream HTTP server, a real gateway on loopback in front of
it, and the official `openai` SDK pointed at the gateway."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer, make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_app
from gateway.config import GatewayConfig, parse_config
from gateway.contract import ChatCompletionRequest
from gateway.pipeline import Exchange
from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import FakeUpstream
from gateway.testing.fault_proxy import FaultProxy
from tests.small_filesystem import SmallFilesystem, small_filesystem_on

TEAM_KEY = "gw-test-team-key-0123456789abcdef"
OTHER_TEAM_KEY = "gw-test-other-team-key-fedcba9876543210"
UPSTREAM_KEY = "upstream-secret-key-for-tests"
UPSTREAM_KEY_ENV = "TEST_UPSTREAM_KEY"

# The model every test team may call, served by the contract-native (together) dialect.
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
UPSTREAM_MODEL = "fake/llama-3.1-8b"
OPENAI_MODEL = "gpt-4o-mini"
OTHER_TEAM_MODEL = "team-b-private-model"


def config_dict(upstream_url: str, **server: Any) -> dict[str, Any]:
    """A configuration with two upstream dialects on one fake upstream and two teams."""
    upstream = {
        "base_url": f"{upstream_url}/v1",
        "api_key_env": UPSTREAM_KEY_ENV,
        "timeouts": {"connect": 2, "first_byte": 5, "idle": 5, "total": 30},
    }
    return {
        "server": {"log_format": "json", "log_level": "debug", **server},
        # The suite has no certificates: HIPAA tests use plain http on loopback.
        "security": {"allow_plaintext_loopback_hipaa": True},
        "upstreams": {
            "fake": {**upstream, "dialect": "together", "hipaa_eligible": True},
            "fake-openai": {**upstream, "dialect": "openai"},
        },
        "models": {
            MODEL: {
                "aliases": ["llama-8b"],
                "upstreams": [{"upstream": "fake", "model": UPSTREAM_MODEL}],
            },
            OPENAI_MODEL: {"upstreams": [{"upstream": "fake-openai"}]},
            OTHER_TEAM_MODEL: {"upstreams": [{"upstream": "fake"}]},
        },
        "teams": {
            "team-a": {"key_hashes": [hash_key(TEAM_KEY)], "models": [MODEL, OPENAI_MODEL]},
            "team-b": {"key_hashes": [hash_key(OTHER_TEAM_KEY)], "models": [OTHER_TEAM_MODEL]},
        },
    }


def redis_limited_config(
    upstream_url: str, redis_url: str, limits: dict[str, Any], **rate: Any
) -> dict[str, Any]:
    """The suite's configuration with team-a's `limits` counted in the Redis at `redis_url`
    (`rate`: more `rate_limits` settings)."""
    raw = config_dict(upstream_url)
    raw["rate_limits"] = {"redis_url": redis_url, **rate}
    raw["teams"]["team-a"]["limits"] = limits
    return raw


def make_config(raw: dict[str, Any]) -> GatewayConfig:
    return parse_config(raw, environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY})


@dataclass
class RunningUpstream:
    state: FakeUpstream
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@dataclass
class RunningGateway:
    server: TestServer
    log: io.StringIO
    config: GatewayConfig

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def log_text(self) -> str:
        return self.log.getvalue()

    def log_records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The gateway's JSON log lines, optionally only those of one event."""
        records = [json.loads(line) for line in self.log_text().splitlines()]
        return [r for r in records if event is None or r["event"] == event]


@asynccontextmanager
async def serve_fake_upstream() -> AsyncIterator[RunningUpstream]:
    state = FakeUpstream(api_key=UPSTREAM_KEY)
    server = TestServer(state.app())
    await server.start_server()  # TestServer cancels handlers of departed clients
    yield RunningUpstream(state, server)
    await server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[RunningUpstream]:
    async with serve_fake_upstream() as running:
        yield running


@pytest.fixture
async def spare_upstream() -> AsyncIterator[RunningUpstream]:
    """A second fake upstream, for a model's other upstream or a safety model's own."""
    async with serve_fake_upstream() as running:
        yield running


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(upstream: RunningUpstream) -> AsyncIterator[StartGateway]:
    """Starts a gateway in front of `upstream`; keyword arguments override `server:`."""
    servers: list[TestServer] = []

    async def start(raw: dict[str, Any] | None = None, **server_options: Any) -> RunningGateway:
        config = make_config(raw or config_dict(upstream.url, **server_options))
        log = io.StringIO()
        server = TestServer(build_app(config, log_stream=log))
        await server.start_server()  # TestServer cancels handlers of departed clients
        servers.append(server)
        return RunningGateway(server, log, config)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> RunningGateway:
    return await start_gateway()


@asynccontextmanager
async def sdk_for(
    gateway: RunningGateway, key: str = TEAM_KEY
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK pointed at `gateway` with `key`, never retrying on its own."""
    sdk = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_for(gateway) as sdk:
        yield sdk


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def post_chat(
    gateway: RunningGateway, body: Any, headers: dict[str, str] | None = None
) -> Reply:
    """POST /v1/chat/completions with the team key (unless `headers` say otherwise)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers=auth() if headers is None else headers,
        ) as resp,
    ):
        return Reply(resp.status, dict(resp.headers), await resp.read())


async def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    """The sum of the gateway's `name` samples (from /metrics) whose labels include
    `labels`."""
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def add_safety_model(raw: dict[str, Any], url: str, model: str, **upstream: Any) -> None:
    """Adds `model`, served by a fake upstream at `url` (a fake whose model name contains
    "guard" answers like Llama Guard), to a configuration from config_dict()."""
    raw["upstreams"][f"{model}-upstream"] = {
        **raw["upstreams"]["fake-openai"],
        "base_url": f"{url}/v1",
        **upstream,
    }
    raw["models"][model] = {"upstreams": [{"upstream": f"{model}-upstream"}]}


async def wait_ready(url: str, seconds: float = 20.0) -> None:
    """Until a gateway started as a process answers /readyz with 200."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/readyz") as ready:
                    if ready.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{url} never became ready"
            await asyncio.sleep(0.05)


def chat_body(**params: Any) -> dict[str, Any]:
    """A minimal valid request body with `params` added (or replacing the defaults)."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "hello there"},
        ],
        **params,
    }


def auth(key: str = TEAM_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- stages on their own


def an_exchange(headers: dict[str, str] | None = None, **fields: Any) -> Exchange:
    """An exchange as a stage sees it, without an HTTP server: `fields` are what earlier
    stages decided."""
    http = make_mocked_request("POST", "/v1/chat/completions", headers=headers or {})
    return Exchange(request_id="req-unit", http=http, **fields)


def a_request(**params: Any) -> ChatCompletionRequest:
    """A validated request: chat_body() with `params`."""
    return ChatCompletionRequest.model_validate(chat_body(**params))


def unit_config(mutate: Callable[[dict[str, Any]], None] | None = None) -> GatewayConfig:
    """The suite's configuration (upstreams unreachable: stages alone never call them),
    optionally changed by `mutate` first."""
    raw = config_dict("http://127.0.0.1:9")
    if mutate is not None:
        mutate(raw)
    return make_config(raw)


# ---------------------------------------------------------------- a real redis-server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A real `redis-server` on a free loopback port, without persistence; it can be
    killed and restarted on the same port to play a Redis outage."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, like a crashed or unplugged server."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (keeps the test's own client out of the way)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(b"".join(parts))
            return conn.recv(65536)


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.process is not None:
        server.kill()


@pytest.fixture
def redis_server(shared_redis: RedisProcess) -> RedisProcess:
    """The session's redis-server, emptied for this test."""
    assert shared_redis.command("FLUSHALL").startswith(b"+OK")
    return shared_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, for tests that kill it."""
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.kill()


# ---------------------------------------------------------------- fault matrix helpers
# Shared by tests/fault_matrix (one file per row of /work/shared/fault-matrix.md).

_GATEWAY_DIR = Path(__file__).resolve().parents[1] / "gateway"
# The fault proxy is the network, not the gateway: its pipes live as long as connections.
_NETWORK_CODE = str(_GATEWAY_DIR / "testing" / "fault_proxy.py")


async def wait_for(condition: Callable[[], object], seconds: float = 3.0) -> float:
    """Seconds until `condition()` held (polled every 10 ms); fails after `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "the condition never held"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _awaited_files(task: asyncio.Task[Any]) -> list[str]:
    """The source files of the coroutines `task` is suspended in, outermost first."""
    files: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            files.append(frame.f_code.co_filename)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return files


def tasks_in_gateway_code() -> list[asyncio.Task[Any]]:
    """Tasks of the running loop (but the caller's) suspended in the gateway's code or the
    fake upstream's: once a test's requests have ended, each is work left behind (a stage
    still running, a background task, an upstream handler nobody hung up on)."""
    current = asyncio.current_task()
    return [
        task
        for task in asyncio.all_tasks()
        if task is not current
        and any(
            path.startswith(str(_GATEWAY_DIR)) and path != _NETWORK_CODE
            for path in _awaited_files(task)
        )
    ]


def asyncio_complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What asyncio logged at WARNING or above (e.g. "Task was destroyed but it is
    pending!", "Task exception was never retrieved"), after a garbage collection."""
    gc.collect()
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "asyncio" and record.levelno >= logging.WARNING
    ]


StartProxy = Callable[[int], Awaitable[FaultProxy]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    """Starts a FaultProxy in front of a loopback port; every one is closed after the test."""
    proxies: list[FaultProxy] = []

    async def start(port: int) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()


# ---------------------------------------------------------------- a real Redis Cluster
# Six redis-server processes on loopback as one Redis Cluster (branch `cluster`).

# What a cluster node adds to RedisProcess's command line (redis-server takes the last value
# of an option): a node timeout short enough for a failover within seconds; replicas that
# sync at once (not after the default 5 s diskless delay) and may be promoted whatever
# their lag (an idle test cluster has no data worth waiting for); and masters that keep
# serving their own slots while another master's are uncovered, as a rate-limit cluster
# should be run (see the README).
CLUSTER_NODE_TIMEOUT_MS = 1000
_CLUSTER_OPTIONS = (
    "--cluster-enabled yes --cluster-config-file nodes.conf"
    f" --cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}"
    " --cluster-require-full-coverage no --cluster-replica-validity-factor 0"
    " --repl-diskless-sync-delay 0"
)


def resp_text(reply: bytes) -> str:
    """The text of a RESP bulk-string reply (INFO, CLUSTER NODES, CLUSTER INFO)."""
    assert reply.startswith(b"$"), reply
    length, _, rest = reply[1:].partition(b"\r\n")
    return rest[: int(length)].decode()


@dataclass(frozen=True)
class ClusterNodeInfo:
    port: int
    node_id: str
    master: bool
    failed: bool
    master_id: str | None  # a replica's master
    slots: tuple[tuple[int, int], ...]


class RedisClusterProcesses:
    """A Redis Cluster of real `redis-server` processes on free loopback ports: three
    masters (slots 0-5460, 5461-10922, 10923-16383, as `redis-cli --cluster create` splits
    them) and one replica each, without persistence (but the nodes.conf a cluster node
    needs)."""

    def __init__(self, directory: Path) -> None:
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed (scripts/test.sh installs it)"
        self.cli = cli
        self.nodes: list[RedisProcess] = []
        for i in range(6):
            node_dir = directory / f"node-{i}"
            node_dir.mkdir()
            node = RedisProcess(node_dir)
            # The cluster bus gets a free port of its own (by default it is the node's port
            # plus 10000, which may be taken, or past 65535).
            options = f"{_CLUSTER_OPTIONS} --cluster-port {free_port()}"
            wrapper = node_dir / "redis-server-cluster"
            wrapper.write_text(f'#!/bin/sh\nexec {node.binary} "$@" {options}\n')
            wrapper.chmod(0o755)
            node.binary = str(wrapper)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """The gateway's `redis_url`: the first three nodes as the ones to start from."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create"]
            + [f"127.0.0.1:{node.port}" for node in self.nodes]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def alive(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.process is not None]

    def view(self, port: int) -> list[ClusterNodeInfo]:
        """The cluster as the node on `port` sees it (CLUSTER NODES)."""
        infos = []
        for line in resp_text(self.node(port).command("CLUSTER", "NODES")).splitlines():
            node_id, address, flags, master_id, *_, state = line.split()[:8]
            # Slot ranges ("0-5460", "42"); "[slot->-id]" entries are migrations.
            ranges = [part.partition("-") for part in line.split()[8:] if part[0] != "["]
            slots = tuple((int(lo), int(hi or lo)) for lo, _, hi in ranges)
            flag_set = set(flags.split(","))
            infos.append(
                ClusterNodeInfo(
                    port=int(address.split("@")[0].rsplit(":", 1)[1]),
                    node_id=node_id,
                    master="master" in flag_set,
                    failed="fail" in flag_set or state != "connected",
                    master_id=None if master_id == "-" else master_id,
                    slots=slots,
                )
            )
        return infos

    def masters(self, port: int | None = None) -> dict[int, tuple[tuple[int, int], ...]]:
        """Port -> slot ranges of the masters serving slots, as a live node sees it."""
        seen = self.view(port or self.alive()[0].port)
        return {n.port: n.slots for n in seen if n.master and not n.failed and n.slots}

    def master_of_slot(self, slot: int, port: int | None = None) -> int:
        for master, ranges in self.masters(port).items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return master
        raise AssertionError(f"no live master serves slot {slot}")

    def replica_of(self, master_port: int) -> int:
        seen = self.view(master_port)
        master_id = next(n.node_id for n in seen if n.port == master_port)
        return next(n.port for n in seen if n.master_id == master_id)

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees three masters covering all slots
        and a live replica for each; every replica has synced with its master."""
        try:
            for node in self.alive():
                if "cluster_state:ok" not in resp_text(node.command("CLUSTER", "INFO")):
                    return False
                seen = self.view(node.port)
                masters = [n for n in seen if n.master and not n.failed and n.slots]
                replicas = [n for n in seen if not n.master and not n.failed]
                covered = sum(hi - lo + 1 for m in masters for lo, hi in m.slots)
                if len(masters) != 3 or covered != 16384 or len(replicas) != 3:
                    return False
                if {r.master_id for r in replicas} != {m.node_id for m in masters}:
                    return False
                info = resp_text(node.command("INFO", "replication"))
                if "role:slave" in info and "master_link_status:up" not in info:
                    return False
        except (OSError, AssertionError):
            return False
        return True

    def wait_healthy(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not self.healthy():
            assert time.monotonic() < deadline, "the Redis Cluster never became healthy"
            time.sleep(0.05)

    def flush(self) -> None:
        """Empties every master (replicas follow)."""
        for port in self.masters():
            assert self.node(port).command("FLUSHALL").startswith(b"+OK")

    def stop(self) -> None:
        for node in self.alive():
            node.kill()


@pytest.fixture(scope="session")
def shared_redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(shared_redis_cluster: RedisClusterProcesses) -> RedisClusterProcesses:
    """The session's Redis Cluster, emptied for this test (and whole: a test that kills a
    node uses `own_redis_cluster`)."""
    assert shared_redis_cluster.healthy()
    shared_redis_cluster.flush()
    return shared_redis_cluster


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    """A Redis Cluster of this test's own, for tests that kill its nodes."""
    cluster = RedisClusterProcesses(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------- a small real filesystem


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """A 64 KB tmpfs mounted on `tmp_path / "small"` for the test (see
    tests/small_filesystem.py), unmounted afterwards."""
    with small_filesystem_on(tmp_path / "small") as filesystem:
        yield filesystem
