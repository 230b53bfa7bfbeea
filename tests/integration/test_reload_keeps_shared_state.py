"""A reload rebuilds what the configuration decides and keeps what the process has learnt:
a concurrency lease taken before it still counts after it, and its release (settled by the
old generation's stage) reaches the new generation's next admission at once; an address
blocked for failed authentications stays blocked; an upstream ejected by passive health
stays ejected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    TEAM_KEY,
    RunningUpstream,
    auth,
    chat_body,
    config_dict,
    post_chat,
)
from tests.file_gateway import FileGateway, file_gateway


def with_new_team(raw: dict[str, object]) -> dict[str, object]:
    teams = raw["teams"]
    assert isinstance(teams, dict)
    teams["new"] = {"key_hashes": [hash_key("gw-shared-state-new-key-01")], "models": ["*"]}
    return raw


async def test_a_lease_taken_before_a_reload_counts_and_is_released_after_it(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.state.default = Behavior(delay=0.05)
    raw = config_dict(upstream.url)
    raw["teams"]["team-a"]["limits"] = {"max_concurrent": 1}
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        started = asyncio.Event()

        async def stream() -> bytes:
            words = " ".join(["word"] * 20)  # about a second
            body = chat_body(stream=True, messages=[{"role": "user", "content": words}])
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{gateway.url}/v1/chat/completions", json=body, headers=auth()
                ) as resp,
            ):
                received = b""
                async for chunk in resp.content.iter_any():
                    received += chunk
                    started.set()
                return received

        streaming = asyncio.create_task(stream())
        await asyncio.wait_for(started.wait(), 10)

        assert (await gateway.reload_with(with_new_team(raw))).result == "ok"
        during = await post_chat(gateway, chat_body())
        answer = await streaming
        after = await post_chat(gateway, chat_body())

    assert not streaming.cancelled() and answer.endswith(b"data: [DONE]\n\n")
    assert during.status == 429  # the stream's lease, taken before the reload, still counts
    assert "concurrent" in during.json()["error"]["message"]
    assert after.status == 200  # and its release reached the new generation's admission


async def test_an_address_blocked_before_a_reload_stays_blocked(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = config_dict(upstream.url)
    raw["auth_failures"] = {"max_failures": 2, "block_s": 300}
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        wrong = [
            (await post_chat(gateway, chat_body(), auth("gw-wrong-key-000000000001"))).status
            for _ in range(3)
        ]

        assert (await gateway.reload_with(with_new_team(raw))).result == "ok"
        blocked = await post_chat(gateway, chat_body(), auth(TEAM_KEY))

    assert wrong == [401, 401, 429]
    assert blocked.status == 429
    assert blocked.json()["error"]["code"] == "too_many_auth_failures"


async def upstream_states(gateway: FileGateway) -> dict[str, tuple[str, int]]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        upstreams = (await resp.json())["upstreams"]
    return {name: (u["state"], u["ejections"]) for name, u in upstreams.items()}


async def test_an_upstream_ejected_before_a_reload_stays_ejected(
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spare_upstream.state.default = Behavior(status=503)
    raw = config_dict(upstream.url)
    raw["upstreams"]["failing"] = {
        **raw["upstreams"]["fake"],
        "base_url": f"{spare_upstream.url}/v1",
    }
    raw["models"][MODEL]["upstreams"].append({"upstream": "failing"})
    raw["health"] = {"consecutive_failures": 1, "base_ejection_s": 300}
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        for _ in range(40):  # each picks one of the two by weight; a failure is retried
            assert (await post_chat(gateway, chat_body())).status == 200
            if (await upstream_states(gateway))["failing"][0] == "ejected":
                break
        before = await upstream_states(gateway)

        assert (await gateway.reload_with(with_new_team(raw))).result == "ok"
        after = await upstream_states(gateway)
        calls = len(spare_upstream.state.requests)
        statuses = [(await post_chat(gateway, chat_body())).status for _ in range(10)]

    assert before["failing"] == after["failing"] == ("ejected", 1)
    assert statuses == [200] * 10
    assert len(spare_upstream.state.requests) == calls  # still out of the rotation
