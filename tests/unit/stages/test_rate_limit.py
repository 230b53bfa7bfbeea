"""The rate-limit stage on its own (in-process backend, a fixed clock): on the way in it
reserves the prompt estimate plus every completion the request may generate; on the way
out it settles what the request really used, which the team's next admission sees."""

from __future__ import annotations

import io
from typing import Any

import pytest

from gateway.accounting import Usage
from gateway.config import ServerConfig
from gateway.errors import RateLimited
from gateway.limiter.memory import MemoryLimiter
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import Exchange
from gateway.routing import CallRecord
from gateway.stages.context_length import Fitted
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.route import Router
from gateway.tasks import BackgroundTasks
from gateway.teams import teams_of
from gateway.upstream.client import JsonAnswer
from tests.conftest import MODEL, a_request, an_exchange, unit_config


def limited(raw: dict[str, Any]) -> None:
    raw["teams"]["team-a"]["limits"] = {"tokens_per_minute": 1000}


@pytest.fixture
def stage() -> RateLimitStage:
    config = unit_config(limited)
    log = make_logger(ServerConfig(), io.StringIO())
    backend = MemoryLimiter(clock=lambda: 1_000_000.0)  # time stands still: no refill
    return RateLimitStage(config, backend, BackgroundTasks(log), log, GatewayMetrics())


def exchange(prompt_tokens: int, **params: Any) -> Exchange:
    config = unit_config(limited)
    request = a_request(**params)
    return an_exchange(
        team=teams_of(config)["team-a"],
        route=Router(config).resolve("team-a", MODEL),
        fitted=Fitted(request, prompt_tokens, 0),
    )


async def test_the_reservation_is_the_prompt_plus_every_completion_it_may_generate(
    stage: RateLimitStage,
) -> None:
    first = exchange(20, max_tokens=30, n=2)

    await stage.enter(first)

    assert first.admission is not None and first.admission.reserved_tokens == 20 + 30 * 2
    assert first.admission.headers["x-ratelimit-remaining-tokens"] == str(1000 - 80)


async def test_what_a_request_used_is_what_the_next_admission_sees(
    stage: RateLimitStage,
) -> None:
    first = exchange(10, max_tokens=5)
    await stage.enter(first)
    # The upstream answered and reported 900 tokens; the request leaves.
    first.call = CallRecord("fake", 1)
    first.answer = JsonAnswer(b"{}", Usage(400, 500))
    stage.leave(first)

    second = exchange(10, max_tokens=5)
    await stage.enter(second)
    assert second.admission is not None
    assert second.admission.headers["x-ratelimit-remaining-tokens"] == str(1000 - 900 - 15)

    with pytest.raises(RateLimited):
        await stage.enter(exchange(10, max_tokens=80))  # 90 more than the 85 left
