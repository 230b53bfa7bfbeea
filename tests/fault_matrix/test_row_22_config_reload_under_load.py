"""Fault-matrix row 22, config reload under load: a gateway reloaded 50 times by SIGHUP
while clients keep whole answers and streams in flight answers every request 200 (zero
5xx, nothing dropped), and each request is served by one generation from start to end.

The two configurations it alternates between differ in two decisions taken by different
stages: the route (model `swapped` goes to upstream model `fake/even` or `fake/odd`) and the
team's policy (a `max_tokens` cap of 7 or 9). The fake upstream records what each request
arrived with: a request that took its route from one generation and its policy from the
other would arrive as `fake/even` with 9, or `fake/odd` with 7. The larger, row-by-row
reload test is tests/integration/test_reload_under_load.py."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.testing.fake_upstream import Behavior
from tests.conftest import RunningUpstream, auth, chat_body, config_dict
from tests.gateway_process import gateway_process

RELOADS = 50
CLIENTS = 4
# Generation parity -> (the upstream model it routes to, the team's max_tokens cap).
DECISIONS = {0: ("fake/even", 7), 1: ("fake/odd", 9)}
PROMPT = " ".join(f"w{i}" for i in range(20))  # more words than either cap


def configuration(upstream_url: str, policies: Path, parity: int) -> dict[str, Any]:
    model, cap = DECISIONS[parity]
    raw = config_dict(upstream_url, log_level="info")
    raw["policies_dir"] = str(policies)
    raw["models"]["swapped"] = {"upstreams": [{"upstream": "fake", "model": model}]}
    raw["teams"]["team-a"]["models"] = ["swapped"]
    raw["teams"]["team-a"]["policies"] = [f"cap-{cap}"]
    return raw


async def test_fifty_reloads_under_load_drop_nothing_and_mix_no_generations(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    upstream.state.default = Behavior(delay=0.005)
    policies = tmp_path / "policies"
    policies.mkdir()
    for _, cap in DECISIONS.values():
        (policies / f"cap-{cap}.yaml").write_text(
            yaml.safe_dump({"caps": {"max_tokens": {"limit": cap, "action": "clamp"}}})
        )
    stop = asyncio.Event()
    statuses: list[int] = []
    broken: list[str] = []

    async def client(session: aiohttp.ClientSession, url: str, number: int) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            stream = (turn + number) % 2 == 0
            body = chat_body(
                model="swapped", stream=stream, messages=[{"role": "user", "content": PROMPT}]
            )
            try:
                async with session.post(
                    f"{url}/v1/chat/completions", json=body, headers=auth()
                ) as resp:
                    data = await resp.read()
                statuses.append(resp.status)
                if stream and not data.endswith(b"data: [DONE]\n\n"):
                    broken.append(f"client {number}: a stream ended early")
            except aiohttp.ClientError as exc:
                broken.append(f"client {number}: {type(exc).__name__}")

    raw = configuration(upstream.url, policies, 0)
    with gateway_process(tmp_path, upstream.url, raw=raw) as gateway:
        async with aiohttp.ClientSession() as session:

            async def generation() -> int:
                async with session.get(f"{gateway.url}/readyz") as resp:
                    answer: dict[str, Any] = await resp.json()
                    return int(answer["config_generation"])

            clients = [asyncio.create_task(client(session, gateway.url, i)) for i in range(CLIENTS)]
            for i in range(1, RELOADS + 1):
                await asyncio.sleep(0.03)  # traffic between reloads
                new = configuration(upstream.url, policies, i % 2)
                new["server"]["port"] = gateway.port
                gateway.config.write_text(yaml.safe_dump(new))
                gateway.process.send_signal(signal.SIGHUP)
                for _ in range(500):  # until it is in force (10 s at most)
                    if await generation() == i + 1:
                        break
                    await asyncio.sleep(0.02)
                assert await generation() == i + 1, f"reload {i} was not put in force"
            await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*clients)
        reloaded = gateway.records("config_reloaded")

    arrived = {(r.body["model"], r.body.get("max_tokens")) for r in upstream.state.requests}
    assert len(reloaded) == RELOADS
    assert broken == []
    assert len(statuses) > RELOADS  # traffic ran throughout
    assert set(statuses) == {200}
    assert arrived == set(DECISIONS.values())  # both generations served, never mixed
