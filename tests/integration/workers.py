"""Helpers for the tests of `serve --workers N` (gateway/supervisor.py): the suite's
configuration on a real Redis, and requests that each open a connection of their own, so
that the kernel spreads them over the workers (SO_REUSEPORT hashes each connection)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import WORKER_HEADER
from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, auth, chat_body, config_dict
from tests.gateway_process import ROOT, GatewayProcess, start_gateway_process

WORKERS = 2


def start_workers(
    directory: Path,
    upstream_url: str,
    redis_url: str,
    limits: dict[str, int] | None = None,
    audit: dict[str, Any] | None = None,
) -> GatewayProcess:
    """`serve --workers 2` with the suite's configuration, its limits in Redis (a deadline
    that a loaded machine keeps, and any missed one refused rather than admitted), and
    `audit` as its `audit:` section if given."""
    raw: dict[str, Any] = config_dict(upstream_url, shutdown_timeout=10)
    raw["rate_limits"] = {
        "redis_url": redis_url,
        "redis_timeout_ms": 5000,
        "failure_mode": "closed",
    }
    if limits:
        raw["teams"]["team-a"]["limits"] = limits
    if audit:
        raw["audit"] = audit
    return start_gateway_process(directory, raw=raw, workers=WORKERS)


def serve_workers_once(directory: Path, raw: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`serve --workers 2` on the configuration `raw`, for one that is expected to end by
    itself (a refusal, a failed start): its exit code and output."""
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY},
        capture_output=True,
        text=True,
        timeout=30,
    )


@dataclass(frozen=True)
class Answer:
    status: int
    worker: str
    body: bytes


def fresh_connections() -> aiohttp.ClientSession:
    """A session that opens a new connection for every request."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


async def chat(
    session: aiohttp.ClientSession,
    gateway: GatewayProcess,
    request_id: str,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Answer:
    async with session.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat_body(**params),
        headers={**(auth() if headers is None else headers), "x-request-id": request_id},
    ) as resp:
        return Answer(resp.status, resp.headers[WORKER_HEADER], await resp.read())


async def requests_total(gateway: GatewayProcess) -> dict[str, float]:
    """One scrape: `llm_gateway_requests_total` summed by the worker that counted it."""
    async with fresh_connections() as session, session.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    by_worker: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llm_gateway_requests_total":
                worker = sample.labels["worker"]
                by_worker[worker] = by_worker.get(worker, 0.0) + sample.value
    return by_worker


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Until `condition()` holds (polled every 50 ms); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)
