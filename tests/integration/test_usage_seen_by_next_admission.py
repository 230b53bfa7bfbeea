"""Tokens per minute are exact within one gateway: a request admitted after another one
finished is decided against a budget that already holds that one's real usage, even when
it arrives within the milliseconds before settlements are flushed, and on both backends."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    RedisProcess,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
)

ROUNDS = 100
LIMIT = 1000  # tokens per minute
USED = 900  # what every answer reports, whatever the request reserved
REFILL_PER_S = LIMIT / 60


def round_key(round_: int) -> str:
    return f"gw-round-{round_:03d}-key-0123456789abcdef"


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    server: RedisProcess = request.getfixturevalue("redis_server")
    return server.url


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_third_request_after_two_costly_answers_is_refused_every_round(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_url: str | None, stream: bool
) -> None:
    raw = config_dict(upstream.url)
    raw["rate_limits"] = {"redis_url": redis_url, "redis_timeout_ms": 1000}
    # One team per round: every round starts from a full budget of its own.
    raw["teams"] = {
        f"round-{i}": {
            "key_hashes": [hash_key(round_key(i))],
            "models": [MODEL],
            "limits": {"tokens_per_minute": LIMIT},
        }
        for i in range(ROUNDS)
    }
    gateway = await start_gateway(raw)
    upstream.state.default = Behavior(usage_total=USED)
    body = chat_body(max_tokens=5, stream=stream, messages=[{"role": "user", "content": "hi"}])
    reserved = 4 + 1 + 5  # prompt estimate (4 a message, 1 for "hi") plus max_tokens

    failures: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i in range(ROUNDS):
            started = time.monotonic()
            answers: list[tuple[int, dict[str, Any]]] = []
            for _ in range(4):  # back to back, each after the previous answer
                async with session.post(
                    f"{gateway.url}/v1/chat/completions", json=body, headers=auth(round_key(i))
                ) as resp:
                    await resp.read()
                    answers.append((resp.status, dict(resp.headers)))
            refill = (time.monotonic() - started) * REFILL_PER_S
            statuses = [status for status, _ in answers]
            left = [int(headers["x-ratelimit-remaining-tokens"]) for _, headers in answers]
            # Charged before each admission: nothing, then the first answer's real usage.
            expected = [LIMIT - reserved, LIMIT - USED - reserved]
            within = all(
                want - 1 <= got <= want + 1 + refill
                for want, got in zip(expected, left, strict=False)
            )
            if statuses != [200, 200, 429, 429] or not within or left[2:] != [0, 0]:
                failures.append(f"round {i}: statuses {statuses}, remaining {left}")

    assert not failures, f"{len(failures)} of {ROUNDS} rounds: " + "; ".join(failures[:5])
