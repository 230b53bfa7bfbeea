"""Gateway overhead benchmark: the same small chat request sent straight to the fake
upstream, through the gateway with no limits, and through the gateway with rate limits in
Redis (a real redis-server) and in process, all in one run, on loopback.

Reports, to a JSON file (default bench-results/core.json):
- latency: p50/p99 of each variant at concurrency 1, interleaved in rounds so that machine
  noise hits all alike; `gateway_added_*` is gateway minus direct, `redis_stage_added_*`
  is gateway-with-Redis-limits minus gateway-without-limits (the rate-limit stage's cost);
- cpu: gateway process CPU time per request under concurrent load (from /proc), next to
  the fake upstream's CPU per request in the same run, and their ratio.

Usage: .venv/bin/python scripts/bench.py [--requests N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEAM_KEY = "gw-bench-team-key"
UPSTREAM_KEY = "bench-upstream-key"
BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello to the benchmark, please."}],
    "max_tokens": 16,
    "temperature": 0.2,
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_config(
    directory: Path, name: str, upstream_port: int, gateway_port: int, rate_limits: dict[str, Any]
) -> Path:
    sys.path.insert(0, str(ROOT))
    from gateway.stages.auth import hash_key

    limits = (
        # Far above what the run sends: every request is decided, none refused.
        {
            "requests_per_minute": 10_000_000,
            "tokens_per_minute": 10_000_000_000,
            "max_concurrent": 1000,
        }
        if rate_limits
        else {}
    )
    config = {
        "server": {"port": gateway_port, "log_format": "json", "log_level": "info"},
        "rate_limits": rate_limits,
        "upstreams": {
            "fake": {
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "dialect": "together",
                "api_key_env": "BENCH_UPSTREAM_KEY",
            }
        },
        "models": {"bench-model": {"upstreams": [{"upstream": "fake"}]}},
        "teams": {"bench": {"key_hashes": [hash_key(TEAM_KEY)], "models": ["*"], "limits": limits}},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url) as resp:
                    if resp.status in (200, 404, 405):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} never came up")


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with session.post(url, json=BODY, headers=headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")
    return time.perf_counter() - started


async def concurrent(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int, width: int
) -> list[float]:
    remaining = iter(range(count))
    latencies: list[float] = []

    async def worker() -> None:
        for _ in remaining:
            latencies.append(await one(session, url, headers))

    await asyncio.gather(*(worker() for _ in range(width)))
    return latencies


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 0.50) * 1000, 4),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 4),
        "mean_ms": round(statistics.fmean(samples) * 1000, 4),
    }


async def redis_pings(
    port: int, count: int, session: aiohttp.ClientSession, between: tuple[str, dict[str, str]]
) -> list[float]:
    """Bare PING round trips from this process, each after one gateway request, so Redis
    is as idle before each PING as it is before each admission at concurrency 1 (an idle
    process takes longer to wake on a VM): the floor under any Redis stage here."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(count):
        await one(session, *between)
        started = time.perf_counter()
        writer.write(b"PING\r\n")
        await reader.readuntil(b"\r\n")
        out.append(time.perf_counter() - started)
    writer.close()
    await writer.wait_closed()
    return out


async def measure(
    args: argparse.Namespace,
    targets: dict[str, tuple[str, dict[str, str]]],
    pids: dict[str, int],
    redis_port: int,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=64)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    samples["redis_ping"] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for url, headers in targets.values():  # warm-up: pools, caches, first-use paths
            await concurrent(session, url, headers, 300, 8)
        rounds = 20
        for _ in range(rounds):
            for name, (url, headers) in targets.items():
                for _ in range(args.requests // rounds):
                    samples[name].append(await one(session, url, headers))
            samples["redis_ping"] += await redis_pings(
                redis_port, args.requests // rounds, session, targets["gateway"]
            )

        # CPU under load, in interleaved rounds; each variant's CPU is also expressed in
        # units of the fake upstream's CPU during the same requests (constant work), which
        # cancels most of this shared machine's drift.
        load = args.requests * 3
        cpu = dict.fromkeys(GATEWAYS, 0.0)
        upstream_cpu = dict.fromkeys(GATEWAYS, 0.0)
        wall = dict.fromkeys(GATEWAYS, 0.0)
        for _ in range(rounds // 4):
            for name in GATEWAYS:
                url, headers = targets[name]
                gateway_before, upstream_before = (
                    cpu_seconds(pids[name]),
                    cpu_seconds(pids["upstream"]),
                )
                started = time.perf_counter()
                await concurrent(session, url, headers, load // (rounds // 4), args.concurrency)
                wall[name] += time.perf_counter() - started
                cpu[name] += cpu_seconds(pids[name]) - gateway_before
                upstream_cpu[name] += cpu_seconds(pids["upstream"]) - upstream_before

    latency = {name: summary(values) for name, values in samples.items()}

    def added(variant: str, baseline: str, q: str) -> float:
        return round(latency[variant][q] - latency[baseline][q], 4)

    return {
        "latency_concurrency_1": {
            "requests_each": len(samples["direct"]),
            **latency,
            "gateway_added_p50_ms": added("gateway", "direct", "p50_ms"),
            "gateway_added_p99_ms": added("gateway", "direct", "p99_ms"),
            "redis_stage_added_p50_ms": added("gateway_redis_limits", "gateway", "p50_ms"),
            "redis_stage_added_p99_ms": added("gateway_redis_limits", "gateway", "p99_ms"),
            "memory_stage_added_p50_ms": added("gateway_memory_limits", "gateway", "p50_ms"),
            "memory_stage_added_p99_ms": added("gateway_memory_limits", "gateway", "p99_ms"),
            # What the Redis stage adds beyond one bare round trip to an idle Redis here.
            "redis_stage_over_ping_p50_ms": round(
                added("gateway_redis_limits", "gateway", "p50_ms")
                - latency["redis_ping"]["p50_ms"],
                4,
            ),
        },
        "cpu_under_load": cpu_report(load, args.concurrency, cpu, upstream_cpu, wall),
    }


def cpu_report(
    load: int,
    concurrency: int,
    cpu: dict[str, float],
    upstream_cpu: dict[str, float],
    wall: dict[str, float],
) -> dict[str, Any]:
    ratio = {name: cpu[name] / upstream_cpu[name] for name in cpu}
    upstream_ms = sum(upstream_cpu.values()) / (load * len(cpu)) * 1000

    def stage_ms(variant: str) -> float:
        return round((ratio[variant] - ratio["gateway"]) * upstream_ms, 4)

    return {
        "requests_each": load,
        "concurrency": concurrency,
        "throughput_rps": {name: round(load / wall[name], 1) for name in cpu},
        "gateway_cpu_ms_per_request": {name: round(cpu[name] / load * 1000, 4) for name in cpu},
        "upstream_cpu_ms_per_request": round(upstream_ms, 4),
        "gateway_to_upstream_cpu_ratio": {name: round(value, 3) for name, value in ratio.items()},
        # Stage costs from the ratios: robust to the machine speeding up or slowing down.
        "redis_stage_cpu_ms_per_request": stage_ms("gateway_redis_limits"),
        "memory_stage_cpu_ms_per_request": stage_ms("gateway_memory_limits"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "core.json")
    args = parser.parse_args()

    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        print("redis-server is needed (apt-get install redis-server)", file=sys.stderr)
        return 2
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    python = sys.executable
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ports = {name: free_port() for name in ("upstream", "redis", *GATEWAYS)}
        try:
            processes["redis"] = subprocess.Popen(
                [
                    redis_binary,
                    "--port",
                    str(ports["redis"]),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    tmp,
                ],
                stdout=subprocess.DEVNULL,
            )
            processes["upstream"] = subprocess.Popen(
                [
                    python,
                    "-m",
                    "gateway",
                    "fake-upstream",
                    "--port",
                    str(ports["upstream"]),
                    "--api-key",
                    UPSTREAM_KEY,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
            for name, rate_limits in GATEWAYS.items():
                if "redis_url" in rate_limits:
                    rate_limits = {**rate_limits, "redis_url": redis_url}
                config = write_config(Path(tmp), name, ports["upstream"], ports[name], rate_limits)
                processes[name] = subprocess.Popen(
                    [python, "-m", "gateway", "serve", "--config", str(config)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            asyncio.run(wait_ready(f"http://127.0.0.1:{ports['upstream']}/v1/models"))
            for name in GATEWAYS:
                asyncio.run(wait_ready(f"http://127.0.0.1:{ports[name]}/readyz"))
            targets = {
                "direct": (
                    f"http://127.0.0.1:{ports['upstream']}/v1/chat/completions",
                    {"Authorization": f"Bearer {UPSTREAM_KEY}"},
                ),
                **{
                    name: (
                        f"http://127.0.0.1:{ports[name]}/v1/chat/completions",
                        {"Authorization": f"Bearer {TEAM_KEY}"},
                    )
                    for name in GATEWAYS
                },
            }
            pids = {name: processes[name].pid for name in ("upstream", *GATEWAYS)}
            results = asyncio.run(measure(args, targets, pids, ports["redis"]))
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(timeout=10)

    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


# Gateway variants: name -> rate_limits config ("redis_url" is filled in at start).
GATEWAYS: dict[str, dict[str, Any]] = {
    "gateway": {},
    "gateway_redis_limits": {"redis_url": None, "redis_timeout_ms": 1000},
    "gateway_memory_limits": {"redis_timeout_ms": 1000},
}


if __name__ == "__main__":
    sys.exit(main())
