"""Mixed-abuse soak: hostile traffic of every kind the gateway must survive, mixed with good
traffic, against a real gateway process and the fake upstream, on loopback.

Good clients send whole and streamed requests throughout and must all be answered 200.
Around them: wrong keys (brute force), malformed JSON, bodies above the size limit,
gzip bombs, unknown paths, parameters out of range, raw requests the HTTP parser refuses,
slowloris sockets that never finish their headers, idle keep-alive sockets, stream clients
that leave mid-stream and stream clients that never read. The process must stay up, and
its resident memory after the soak (and a short rest) must be within 10% of what it was
after the warm-up.

Writes the figures to a JSON file (default bench-results/soak.json).

Usage: .venv/bin/python scripts/soak.py [--requests N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

ROOT = bench.ROOT
GOOD = {"Authorization": f"Bearer {bench.TEAM_KEY}"}
STREAM_BODY = {**bench.BODY, "stream": True, "max_tokens": 64}
# A header with a control character: the HTTP parser's own refusal.
PARSER_ABUSE = b"POST /v1/chat/completions HTTP/1.1\r\nX: a\x01b\r\n\r\n"
ABUSER = "127.0.0.2"
# Wrong keys come from a third address: the 21st blocks it (429), and the other abuse must
# keep reaching the paths it tests.
GUESSER = "127.0.0.3"  # hostile traffic comes from its own address, as it would


def gzip_bomb(inflated_mib: int = 900) -> bytes:
    """About 0.9 MiB of gzip that inflates to `inflated_mib` MiB (zeros)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1024 * 1024)
    parts = [packer.compress(chunk) for _ in range(inflated_mib)]
    return b"".join(parts) + packer.flush()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tally:
    def __init__(self) -> None:
        self.statuses: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    def add(self, kind: str, outcome: object) -> None:
        self.statuses[kind][str(outcome)] += 1


async def http_once(
    session: aiohttp.ClientSession,
    tally: Tally,
    kind: str,
    url: str,
    **request: Any,
) -> None:
    try:
        async with session.post(url, **request) as resp:
            await resp.read()
            tally.add(kind, resp.status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.add(kind, type(exc).__name__)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ABUSER, 0))


async def raw_once(port: int, tally: Tally, kind: str, payload: bytes) -> None:
    """One request the HTTP parser must refuse, over a raw socket."""
    try:
        reader, writer = await connect(port)
        writer.write(payload)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        tally.add(kind, status_line.split(b" ")[1].decode() if status_line else "closed")
        writer.close()
    except (TimeoutError, OSError, IndexError) as exc:
        tally.add(kind, type(exc).__name__)


async def slowloris(port: int, tally: Tally, seconds: float) -> None:
    """Headers that never end: one byte a second until the gateway closes the socket."""
    try:
        reader, writer = await connect(port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(1)
            if reader.at_eof():
                break
        tally.add("slowloris", "closed_by_gateway" if reader.at_eof() else "still_open")
        writer.close()
    except OSError:
        tally.add("slowloris", "closed_by_gateway")


async def idle_keepalive(port: int, tally: Tally, seconds: float) -> None:
    """A connection that never sends anything."""
    try:
        reader, writer = await connect(port)
        try:
            await asyncio.wait_for(reader.read(1), seconds)
            tally.add("idle_socket", "closed_by_gateway")
        except TimeoutError:
            tally.add("idle_socket", "still_open")
        writer.close()
    except OSError as exc:
        tally.add("idle_socket", type(exc).__name__)


async def never_reads(port: int, tally: Tally, seconds: float) -> None:
    """A streaming request whose client never reads a byte of the answer."""
    body = json.dumps(STREAM_BODY).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ABUSER, 0))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {GOOD['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        await asyncio.get_running_loop().sock_sendall(sock, head + body)
        await asyncio.sleep(seconds)
        tally.add("never_reads", "held")
    except OSError as exc:
        tally.add("never_reads", type(exc).__name__)
    finally:
        sock.close()


async def leaves_mid_stream(session: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    try:
        async with session.post(url, json=STREAM_BODY, headers=GOOD) as resp:
            await resp.content.readuntil(b"\n\n")
            tally.add("leaves_mid_stream", resp.status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.add("leaves_mid_stream", type(exc).__name__)


async def soak(port: int, total: int, pid: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    tally = Tally()
    rng = random.Random(7)
    good_latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=30)
    bomb = gzip_bomb()
    hostile = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, local_addr=(ABUSER, 0)), timeout=timeout
    )
    guesser = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, local_addr=(GUESSER, 0)), timeout=timeout
    )
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as session,
        hostile,
        guesser,
    ):
        # Warm-up, then the baseline memory.
        await bench.concurrent(session, url, GOOD, 300, 8)
        await asyncio.sleep(1)
        rss_start = rss_mib(pid)
        rss_peak = rss_start
        started = time.monotonic()

        async def good() -> None:
            body = bench.BODY if rng.random() < 0.7 else STREAM_BODY
            t0 = time.perf_counter()
            await http_once(session, tally, "good", url, json=body, headers=GOOD)
            good_latencies.append(time.perf_counter() - t0)

        abuses = [
            lambda: http_once(
                guesser,
                tally,
                "wrong_key",
                url,
                json=bench.BODY,
                headers={"Authorization": f"Bearer gw-wrong-{rng.random()}"},
            ),
            lambda: http_once(
                hostile,
                tally,
                "malformed_json",
                url,
                data=b'{"model": ',
                headers={**GOOD, "Content-Type": "application/json"},
            ),
            lambda: http_once(
                hostile,
                tally,
                "too_large",
                url,
                data=b"x" * (2 * 1024 * 1024),
                headers={**GOOD, "Content-Type": "application/json"},
            ),
            lambda: http_once(
                hostile,
                tally,
                "gzip_bomb",
                url,
                data=bomb,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ),
            lambda: http_once(hostile, tally, "unknown_path", f"{url}/x", json={}),
            lambda: http_once(
                hostile,
                tally,
                "bad_parameter",
                url,
                json={**bench.BODY, "temperature": 7},
                headers=GOOD,
            ),
            lambda: raw_once(
                port,
                tally,
                "parser_abuse",
                b"POST /v1/chat/completions HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            ),
            lambda: leaves_mid_stream(hostile, url, tally),
        ]
        background = [
            *(asyncio.create_task(slowloris(port, tally, 20)) for _ in range(50)),
            *(asyncio.create_task(idle_keepalive(port, tally, 20)) for _ in range(200)),
            *(asyncio.create_task(never_reads(port, tally, 20)) for _ in range(20)),
        ]
        pending: set[asyncio.Task[None]] = set()
        for i in range(total):
            job = good() if i % 3 == 0 else rng.choice(abuses)()
            pending.add(asyncio.create_task(job))
            if len(pending) >= 32:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if i % 200 == 0:
                rss_peak = max(rss_peak, rss_mib(pid))
        await asyncio.gather(*pending)
        await asyncio.gather(*background)
        duration = time.monotonic() - started
        await asyncio.sleep(3)  # the gateway lets go of what the soak left
        rss_end = rss_mib(pid)
    good_ok = tally.statuses["good"].get("200", 0)
    good_all = sum(tally.statuses["good"].values())
    return {
        "requests": total,
        "duration_s": round(duration, 1),
        "outcomes": {kind: dict(counts) for kind, counts in sorted(tally.statuses.items())},
        "good_answered_200": good_ok,
        "good_sent": good_all,
        "good_p50_ms": round(bench.percentile(good_latencies, 0.5) * 1000, 2),
        "good_p99_ms": round(bench.percentile(good_latencies, 0.99) * 1000, 2),
        "rss_mib": {
            "start": round(rss_start, 1),
            "peak": round(rss_peak, 1),
            "end": round(rss_end, 1),
            "end_over_start": round(rss_end / rss_start, 3),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "soak.json")
    args = parser.parse_args()
    env = {**os.environ, "BENCH_UPSTREAM_KEY": bench.UPSTREAM_KEY}
    with tempfile.TemporaryDirectory() as tmp:
        ports = {name: bench.free_port() for name in ("upstream", "gateway")}
        upstream = subprocess.Popen(
            [
                *(sys.executable, "-m", "gateway", "fake-upstream"),
                *("--port", str(ports["upstream"]), "--api-key", bench.UPSTREAM_KEY),
                *("--delay", "0.005"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        config = bench.write_config(Path(tmp), "soak", ports["upstream"], ports["gateway"], {})
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            asyncio.run(bench.wait_ready(f"http://127.0.0.1:{ports['upstream']}/v1/models"))
            asyncio.run(bench.wait_ready(f"http://127.0.0.1:{ports['gateway']}/readyz"))
            results = asyncio.run(soak(ports["gateway"], args.requests, gateway.pid))
            results["gateway_alive"] = gateway.poll() is None
        finally:
            for process in (gateway, upstream):
                process.terminate()
                process.wait(timeout=10)
    results["passed"] = (
        results["gateway_alive"]
        and results["good_answered_200"] == results["good_sent"]
        and results["rss_mib"]["end_over_start"] <= 1.10
    )
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}", file=sys.stderr)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
