"""Shared by the model-capacity tests: a model on two fake upstreams with `max_in_flight`,
teams that may both call it, and a client that keeps requests in flight."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OTHER_TEAM_KEY,
    TEAM_KEY,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    auth,
    chat_body,
    config_dict,
)

KEYS = {"team-a": TEAM_KEY, "team-b": OTHER_TEAM_KEY}


def client_session() -> aiohttp.ClientSession:
    """A client session with no bound on its connections (aiohttp's default is 100)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def capacity_config(
    first: RunningUpstream,
    second: RunningUpstream,
    max_in_flight: int,
    service_s: float,
    jitter_s: float = 0.0,
) -> dict[str, Any]:
    """MODEL on `fake` and `fake-b`, each taking `max_in_flight` calls at once from the
    gateway and answering each after `service_s` (+- up to `jitter_s`); team-a and team-b
    may both use it."""
    raw = config_dict(first.url)
    raw["server"]["log_level"] = "info"
    raw["upstreams"]["fake"]["max_in_flight"] = max_in_flight
    raw["upstreams"]["fake-b"] = {**raw["upstreams"]["fake"], "base_url": f"{second.url}/v1"}
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "fake", "model": UPSTREAM_MODEL},
        {"upstream": "fake-b", "model": UPSTREAM_MODEL},
    ]
    raw["teams"]["team-b"]["models"].append(MODEL)
    for upstream in (first, second):
        upstream.state.default = Behavior(latency=service_s, jitter=jitter_s)
    return raw


async def post(
    session: aiohttp.ClientSession,
    gateway: RunningGateway,
    team: str,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[int, dict[str, str], float]:
    """One request of `team`: its status, headers and seconds taken."""
    started = time.monotonic()
    async with session.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat_body(**params),
        headers={**auth(KEYS[team]), **(headers or {})},
    ) as resp:
        await resp.read()
        return resp.status, dict(resp.headers), time.monotonic() - started


async def flood(
    session: aiohttp.ClientSession,
    gateway: RunningGateway,
    team: str,
    clients: int,
    stop: asyncio.Event,
    done: list[float],
    stagger_s: float = 0.0,
) -> None:
    """`clients` requests of `team` in flight until `stop`; when each 200 ended, in `done`.
    Client i starts `i * stagger_s` after the first (independent clients do not start in
    lockstep)."""

    async def client(i: int) -> None:
        await asyncio.sleep(i * stagger_s)
        while not stop.is_set():
            status, _, _ = await post(session, gateway, team)
            assert status == 200, status
            done.append(time.monotonic())

    await asyncio.gather(*(client(i) for i in range(clients)))


def queue_waits_ms(gateway: RunningGateway, team: str) -> list[float]:
    """The queue wait of each of `team`'s chat requests, from the access lines."""
    return [
        float(record["queue_wait_ms"])
        for record in gateway.log_records("request")
        if record.get("team") == team and record.get("path") == "/v1/chat/completions"
    ]
