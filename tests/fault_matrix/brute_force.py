"""What the row-20 files (failed authentications) share: a gateway configuration with a small
failure limit, on the in-process counter or a real redis-server, and requests sent from a
chosen loopback source address (the whole of 127.0.0.0/8 is this machine)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEAM_KEY, RedisProcess, Reply, auth, chat_body, config_dict

THRESHOLD = 5
WRONG_KEY = "gw-wrong-key-not-of-any-team-7d1e0c9a"
# A second client address on the same machine.
OTHER_SOURCE = "127.0.0.2"
BACKENDS = ["memory", "redis"]


def guarded_config(
    upstream_url: str, redis_url: str | None = None, *, defaults: bool = False, **limits: Any
) -> dict[str, Any]:
    """The suite's configuration with at most THRESHOLD failures per address (unless
    `limits` say otherwise, or `defaults` leaves the section out), counted in Redis when
    `redis_url` is given."""
    raw = config_dict(upstream_url)
    if not defaults:
        raw["auth_failures"] = {
            "max_failures": THRESHOLD,
            "window_s": 60,
            "block_s": 60,
            **limits,
        }
    if redis_url is not None:
        # A generous deadline: a burst on a shared two-core machine can make the event loop
        # late by more than the default 50 ms, and a failure Redis misses is counted in the
        # process instead (its own file tests that); here the shared count is under test.
        raw["rate_limits"] = {"redis_url": redis_url, "redis_timeout_ms": 2000}
    return raw


def redis_url_for(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None for the in-process backend; the URL of the session's emptied redis-server."""
    if backend == "memory":
        return None
    server: RedisProcess = request.getfixturevalue("redis_server")
    return server.url


async def send(
    url: str,
    count: int = 1,
    *,
    key: str | None = WRONG_KEY,
    source: str = "127.0.0.1",
    concurrency: int = 1,
    headers: dict[str, str] | None = None,
) -> list[Reply]:
    """`count` chat requests with `key` (None: no Authorization header) from `source`, at
    most `concurrency` at a time; the replies in the order the requests were sent."""
    sent_headers = {**({} if key is None else auth(key)), **(headers or {})}
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> Reply:
            async with (
                gate,
                session.post(
                    f"{url}/v1/chat/completions", json=chat_body(), headers=sent_headers
                ) as resp,
            ):
                return Reply(resp.status, dict(resp.headers), await resp.read())

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def valid(url: str, source: str = "127.0.0.1") -> Reply:
    """One request with the team's valid key."""
    return (await send(url, key=TEAM_KEY, source=source))[0]
