"""What the Redis Cluster tests share: teams chosen so that their keys live on given
masters, a configuration with those teams on the cluster, gateway processes started
together, and one request that reports whether Redis decided it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.crc import key_slot

from gateway.stages.auth import hash_key
from tests.conftest import MODEL, RedisClusterProcesses, chat_body, config_dict
from tests.gateway_process import GatewayProcess, start_gateway_process

_DECIDED = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


def teams_on(
    cluster: RedisClusterProcesses, prefix: str, per_master: int = 1
) -> dict[int, list[str]]:
    """Master port -> `per_master` team names whose hash tag ({prefix:team}'s team) is in
    a slot that master serves."""
    masters = cluster.masters()
    found: dict[int, list[str]] = {port: [] for port in masters}
    for i in range(10_000):
        name = f"{prefix}-{i}"
        slot = key_slot(name.encode())
        port = next(p for p, rs in masters.items() if any(lo <= slot <= hi for lo, hi in rs))
        if len(found[port]) < per_master:
            found[port].append(name)
        if all(len(names) == per_master for names in found.values()):
            return found
    raise AssertionError("no team names for every master")


def key_of(team: str) -> str:
    return f"gw-{team}-key-0123456789abcdef"


def cluster_config(
    upstream_url: str, redis_url: str, teams: dict[str, dict[str, int]], **rate: Any
) -> dict[str, Any]:
    """The suite's configuration with `teams` (name -> limits) instead of its own, limited
    on `redis_url`."""
    raw = config_dict(upstream_url)
    raw["server"]["log_level"] = "warning"
    raw["rate_limits"] = {"redis_url": redis_url, **rate}
    raw["teams"] = {
        name: {"key_hashes": [hash_key(key_of(name))], "models": [MODEL], "limits": limits}
        for name, limits in teams.items()
    }
    return raw


@asynccontextmanager
async def gateway_processes(
    directory: Path, raw: dict[str, Any], count: int = 3
) -> AsyncIterator[list[GatewayProcess]]:
    """`count` gateway processes with configuration `raw`, started together, each ready;
    stopped (SIGTERM) on the way out."""
    started: list[GatewayProcess] = []

    def start() -> None:
        # Each its own "server" section: its port is written into it.
        config = {**raw, "server": {**raw["server"]}}
        started.append(start_gateway_process(directory, raw=config))

    try:
        await asyncio.gather(*(asyncio.to_thread(start) for _ in range(count)))
        yield list(started)
    finally:
        await asyncio.gather(*(asyncio.to_thread(g.stop) for g in started))


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic
    latency: float
    status: int
    headers: dict[str, str]
    code: str | None  # the error code, for an error

    @property
    def decided(self) -> bool:
        """Decided by Redis: a limited team's answer then carries the rate-limit headers
        (an admission without a decision, failure_mode open, carries none)."""
        return any(name in self.headers for name in _DECIDED)


async def ask(
    session: aiohttp.ClientSession, url: str, team: str, body: dict[str, Any] | None = None
) -> Answer:
    sent = time.monotonic()
    async with session.post(
        f"{url}/v1/chat/completions",
        json=body or chat_body(),
        headers={"Authorization": f"Bearer {key_of(team)}"},
    ) as resp:
        payload = await resp.read()
    code = json.loads(payload)["error"]["code"] if resp.status >= 400 else None
    return Answer(sent, time.monotonic() - sent, resp.status, dict(resp.headers), code)
