"""The context-length stage on its own: the one estimate of the prompt's tokens, a request
that fits passed on as it is, one that does not refused or shortened (oldest turns first,
never the system prompt or the last user message) into a new request value."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.accounting import estimate_prompt_tokens
from gateway.errors import InvalidRequest
from gateway.routing import Route
from gateway.stages.context_length import ContextLength, fit
from gateway.stages.policy import PolicyDecision
from gateway.stages.route import Router
from tests.conftest import OPENAI_MODEL, a_request, an_exchange, unit_config

HISTORY = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question " * 10},
    {"role": "assistant", "content": "first answer " * 10},
    {"role": "user", "content": "last question"},
]


def route(window: int | None) -> Route:
    def mutate(raw: dict[str, Any]) -> None:
        raw["models"][OPENAI_MODEL]["context_window"] = window

    return Router(unit_config(mutate)).resolve("team-a", OPENAI_MODEL)


async def test_the_stage_writes_the_estimate_once_for_every_later_stage() -> None:
    request = a_request(model=OPENAI_MODEL, messages=HISTORY)
    decision = PolicyDecision(request, route(None), None, False, None, ())
    exchange = an_exchange(policy=decision)

    await ContextLength().enter(exchange)

    assert exchange.fitted is not None
    assert exchange.fitted.request is request
    assert exchange.fitted.prompt_tokens == estimate_prompt_tokens(request)
    assert exchange.fitted.truncated == 0


def test_a_request_that_fits_exactly_passes() -> None:
    request = a_request(model=OPENAI_MODEL, messages=HISTORY, max_tokens=10)
    window = estimate_prompt_tokens(request) + 10

    assert fit(request, route(window)).truncated == 0


def test_one_token_over_is_refused_by_default() -> None:
    request = a_request(model=OPENAI_MODEL, messages=HISTORY, max_tokens=10)
    window = estimate_prompt_tokens(request) + 9

    with pytest.raises(InvalidRequest) as refused:
        fit(request, route(window))

    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "messages")


def test_truncation_drops_the_oldest_turn_into_a_new_request() -> None:
    request = a_request(
        model=OPENAI_MODEL,
        messages=HISTORY,
        max_tokens=10,
        context_length_exceeded_behavior="truncate",
    )
    kept = a_request(model=OPENAI_MODEL, messages=[HISTORY[0], HISTORY[2], HISTORY[3]])
    window = estimate_prompt_tokens(kept) + 10

    fitted = fit(request, route(window))

    assert fitted.truncated == 1
    assert [m.content for m in fitted.request.messages] == [
        HISTORY[0]["content"],
        HISTORY[2]["content"],
        HISTORY[3]["content"],
    ]
    assert fitted.prompt_tokens == estimate_prompt_tokens(fitted.request)
    assert len(request.messages) == 4  # the policy's request is untouched
