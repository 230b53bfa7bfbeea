"""Gateway overhead benchmark: the same small chat request sent straight to the fake
upstream and through the gateway, in one run, on loopback.

Reports, to a JSON file (default bench-results/core.json):
- latency: p50/p99 of direct and gateway round trips at concurrency 1, interleaved in
  rounds so that machine noise hits both alike, and the difference (the added latency);
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


def write_config(directory: Path, upstream_port: int, gateway_port: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from gateway.stages.auth import hash_key

    config = {
        "server": {"port": gateway_port, "log_format": "json", "log_level": "info"},
        "upstreams": {
            "fake": {
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "dialect": "together",
                "api_key_env": "BENCH_UPSTREAM_KEY",
            }
        },
        "models": {"bench-model": {"upstreams": [{"upstream": "fake"}]}},
        "teams": {"bench": {"key_hashes": [hash_key(TEAM_KEY)], "models": ["*"]}},
    }
    path = directory / "bench.yaml"
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


async def sequential(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int
) -> list[float]:
    return [await one(session, url, headers) for _ in range(count)]


async def concurrent(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int, width: int
) -> None:
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            await one(session, url, headers)

    await asyncio.gather(*(worker() for _ in range(width)))


async def measure(
    args: argparse.Namespace, upstream_pid: int, gateway_pid: int, direct_url: str, gateway_url: str
) -> dict[str, Any]:
    direct_headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    gateway_headers = {"Authorization": f"Bearer {TEAM_KEY}"}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: connection pools, caches, first-use paths.
        await concurrent(session, gateway_url, gateway_headers, 300, 8)
        await concurrent(session, direct_url, direct_headers, 300, 8)

        direct: list[float] = []
        through: list[float] = []
        rounds = 10
        for _ in range(rounds):
            direct += await sequential(session, direct_url, direct_headers, args.requests // rounds)
            through += await sequential(
                session, gateway_url, gateway_headers, args.requests // rounds
            )

        load = args.requests * 3
        gateway_cpu = cpu_seconds(gateway_pid)
        upstream_cpu = cpu_seconds(upstream_pid)
        started = time.perf_counter()
        await concurrent(session, gateway_url, gateway_headers, load, args.concurrency)
        wall = time.perf_counter() - started
        gateway_cpu = cpu_seconds(gateway_pid) - gateway_cpu
        upstream_cpu = cpu_seconds(upstream_pid) - upstream_cpu

    def summary(samples: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(samples, 0.50) * 1000, 4),
            "p99_ms": round(percentile(samples, 0.99) * 1000, 4),
            "mean_ms": round(statistics.fmean(samples) * 1000, 4),
        }

    direct_s, through_s = summary(direct), summary(through)
    return {
        "latency_concurrency_1": {
            "requests_each": len(direct),
            "direct": direct_s,
            "gateway": through_s,
            "added_p50_ms": round(through_s["p50_ms"] - direct_s["p50_ms"], 4),
            "added_p99_ms": round(through_s["p99_ms"] - direct_s["p99_ms"], 4),
        },
        "cpu_under_load": {
            "requests": load,
            "concurrency": args.concurrency,
            "throughput_rps": round(load / wall, 1),
            "gateway_cpu_ms_per_request": round(gateway_cpu / load * 1000, 4),
            "upstream_cpu_ms_per_request": round(upstream_cpu / load * 1000, 4),
            "gateway_to_upstream_cpu_ratio": round(gateway_cpu / upstream_cpu, 3)
            if upstream_cpu
            else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "core.json")
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), upstream_port, gateway_port)
        python = sys.executable
        upstream = subprocess.Popen(
            [
                python,
                "-m",
                "gateway",
                "fake-upstream",
                "--port",
                str(upstream_port),
                "--api-key",
                UPSTREAM_KEY,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = subprocess.Popen(
            [python, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            asyncio.run(wait_ready(direct_url.replace("/chat/completions", "/models")))
            asyncio.run(wait_ready(f"http://127.0.0.1:{gateway_port}/readyz"))
            results = asyncio.run(measure(args, upstream.pid, gateway.pid, direct_url, gateway_url))
        finally:
            for process in (gateway, upstream):
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


if __name__ == "__main__":
    sys.exit(main())
