"""Team keys stay between the client and the gateway: the upstream gets the upstream's own
key, and neither key nor prompt text reaches a log line or an error body."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    TEAM_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    RunningUpstream,
    auth,
    chat_body,
)

CANARY = "CANARY-patient-7f3e9d"


async def test_upstream_receives_its_own_key_never_the_team_key(
    client: openai.AsyncOpenAI, upstream: RunningUpstream
) -> None:
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    async for _ in stream:
        pass

    assert len(upstream.state.requests) == 2
    for recorded in upstream.state.requests:
        assert recorded.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert TEAM_KEY not in json.dumps(recorded.headers)
        assert TEAM_KEY not in json.dumps(recorded.body)


async def test_only_allowlisted_headers_reach_the_upstream(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    headers = {**auth(), "Cookie": "session=1", "X-Forwarded-For": "10.0.0.1", "X-Custom": "y"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=headers),
    ):
        pass

    sent = upstream.state.requests[-1].headers
    assert not {"cookie", "x-forwarded-for", "x-custom"} & set(sent)


@pytest.mark.parametrize(
    ("key", "body"),
    [
        (TEAM_KEY, chat_body(messages=[{"role": "user", "content": CANARY}])),
        (TEAM_KEY, chat_body(temperature=CANARY)),
        (TEAM_KEY, chat_body(messages=[{"role": CANARY, "content": CANARY}])),
        # A plain identifier in `model` is named in the 404 (as OpenAI does); anything
        # else there is not repeated.
        (TEAM_KEY, chat_body(model=f"the {CANARY} model")),
        (TEAM_KEY, chat_body(model=TEAM_KEY)),
        (TEAM_KEY, chat_body(stream=True, messages=[{"role": "user", "content": CANARY}])),
        (f"{TEAM_KEY}-{CANARY}", chat_body()),
        (TEAM_KEY, chat_body(response_format={"type": CANARY})),
        (TEAM_KEY, chat_body(logit_bias={CANARY: 1})),
    ],
    ids=[
        "ok",
        "bad-type",
        "bad-role",
        "unknown-model",
        "key-as-model",
        "stream",
        "bad-key",
        "bad-tag",
        "bad-key-name",
    ],
)
async def test_keys_and_prompt_text_never_reach_logs_or_error_bodies(
    gateway: RunningGateway, upstream: RunningUpstream, key: str, body: dict[str, object]
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=auth(key)) as resp,
    ):
        answer = await resp.text()

    logged = gateway.log_text()
    assert [r["status"] for r in gateway.log_records("request")] == [resp.status]
    for secret in (TEAM_KEY, CANARY, UPSTREAM_KEY):
        assert secret not in logged
    if resp.status != 200:
        assert TEAM_KEY not in answer and CANARY not in answer


async def test_upstream_failure_logs_no_prompt_text(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.script.append(Behavior(status=500))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(messages=[{"role": "user", "content": CANARY}]),
            headers=auth(),
        ) as resp,
    ):
        assert resp.status == 503
        assert CANARY not in await resp.text()

    assert CANARY not in gateway.log_text()
