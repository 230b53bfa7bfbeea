"""A unique marker in the prompts of requests that take every path (success, stream, 4xx,
upstream 5xx, safety block, HIPAA with an upstream error, client disconnect) never shows up
in a log line, an error body or /metrics, and every request leaves its audit line."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.testing.fake_upstream import Behavior, FakeUpstream
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    UPSTREAM_KEY,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
)


@pytest.fixture
async def guard() -> AsyncIterator[RunningUpstream]:
    state = FakeUpstream(api_key=UPSTREAM_KEY)
    server = TestServer(state.app())
    await server.start_server()
    yield RunningUpstream(state, server)
    await server.close()


async def test_the_canary_never_leaks_and_every_request_is_audited(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    raw = config_dict(upstream.url)
    raw["upstreams"]["guard-upstream"] = {
        **raw["upstreams"]["fake-openai"],
        "base_url": f"{guard.url}/v1",
    }
    raw["models"]["llama-guard"] = {"upstreams": [{"upstream": "guard-upstream"}]}
    raw["models"][MODEL]["context_window"] = 200
    raw["policies"] = {"guarded": {"safety": {"model": "llama-guard"}}}
    raw["teams"]["team-a"]["policies"] = ["guarded"]
    raw["retries"] = {"max_attempts": 1}
    gateway = await start_gateway(raw)

    def says(text: str, **params: Any) -> dict[str, Any]:
        return chat_body(messages=[{"role": "user", "content": f"{text} {canary}"}], **params)

    paths: list[tuple[str, dict[str, Any], Behavior | None]] = [
        ("success", says("hello"), None),
        ("success-openai", says("hello", model=OPENAI_MODEL), None),
        ("stream", says("hello", stream=True), None),
        ("bad-parameter", says("hello", temperature=canary), None),
        ("bad-role", {**says("x"), "messages": [{"role": canary, "content": canary}]}, None),
        ("unknown-model", says("hello", model=canary), None),
        ("too-long", says("long " * 400), None),
        ("upstream-500", says("hello"), Behavior(status=500)),
        ("upstream-reset", says("hello"), Behavior(reset=True)),
        ("upstream-400-hipaa", says("hello", compliance="hipaa"), Behavior(status=400)),
        ("safety-block", says("UNSAFE:S1", model=OPENAI_MODEL), None),
    ]
    bodies: list[str] = []
    request_ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        url = f"{gateway.url}/v1/chat/completions"
        for name, body, behavior in paths:
            if behavior is not None:
                upstream.state.script.append(behavior)
            request_ids.append(f"canary-{name}")
            headers = {**auth(), "x-request-id": request_ids[-1]}
            async with session.post(url, json=body, headers=headers) as resp:
                bodies.append(await resp.text())

        upstream.state.default = Behavior(delay=0.05)
        request_ids.append("canary-client-left")
        resp = await session.post(
            url,
            json=says("a b c d e f g h", stream=True),
            headers={**auth(), "x-request-id": request_ids[-1]},
        )
        await resp.content.readuntil(b"\n\n")
        resp.close()
        await asyncio.sleep(0.3)

        async with session.get(f"{gateway.url}/metrics") as metrics:
            exposition = await metrics.text()

    logged = gateway.log_text()
    assert canary not in logged
    assert canary not in exposition
    leaked = [name for (name, _, _), body in zip(paths, bodies, strict=True) if canary in body]
    # Only real answers may carry it (the fake echoes the prompt back): never an error.
    assert set(leaked) <= {"success", "success-openai", "stream"}
    assert "withheld" in bodies[[p[0] for p in paths].index("upstream-400-hipaa")]

    audits = {record["request_id"]: record for record in gateway.log_records("audit")}
    assert set(audits) == set(request_ids)
    for record in audits.values():
        assert {"team", "model", "status", "policies", "compliance", "safety_verdict"} <= set(
            record
        )
        assert not {"messages", "content", "prompt"} & set(record)
    assert audits["canary-safety-block"]["safety_verdict"] == "unsafe"
    assert audits["canary-upstream-400-hipaa"]["compliance"] == "hipaa"
    assert audits["canary-client-left"]["outcome"] == "client_aborted"
