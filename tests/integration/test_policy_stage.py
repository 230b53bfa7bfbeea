"""Policies applied to real requests: caps at their boundaries (clamp or reject), defaults
for absent parameters, forbidden parameters and models, and the context window (error or
truncate) at its boundary."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.accounting import estimate_prompt_tokens
from gateway.stages.validate import parse_chat_request
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    post_chat,
)


async def start_with_policy(
    start_gateway: StartGateway, upstream: RunningUpstream, policy: dict[str, Any]
) -> RunningGateway:
    raw = config_dict(upstream.url)
    raw["policies"] = {"p": policy}
    raw["teams"]["team-a"]["policies"] = ["p"]
    return await start_gateway(raw)


async def post(gateway: RunningGateway, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    reply = await post_chat(gateway, body)
    return reply.status, reply.headers, reply.json()


@pytest.mark.parametrize(
    ("sent", "status", "forwarded", "clamped"),
    [(100, 200, 100, None), (101, 200, 100, "max_tokens"), (None, 200, 100, None)],
    ids=["at-limit", "over-limit-clamped", "absent-gets-limit"],
)
async def test_max_tokens_cap_clamps_at_its_boundary(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    sent: int | None,
    status: int,
    forwarded: int,
    clamped: str | None,
) -> None:
    gateway = await start_with_policy(
        start_gateway, upstream, {"caps": {"max_tokens": {"limit": 100, "action": "clamp"}}}
    )

    got, headers, _ = await post(gateway, chat_body(**({"max_tokens": sent} if sent else {})))

    assert got == status
    assert upstream.state.requests[-1].body["max_tokens"] == forwarded
    assert headers.get("x-gateway-clamped-params") == clamped


@pytest.mark.parametrize(("n", "status"), [(2, 200), (3, 400)], ids=["at-limit", "over-limit"])
async def test_n_cap_rejects_past_its_boundary(
    start_gateway: StartGateway, upstream: RunningUpstream, n: int, status: int
) -> None:
    gateway = await start_with_policy(start_gateway, upstream, {"caps": {"n": {"limit": 2}}})

    got, _, body = await post(gateway, chat_body(n=n))

    assert got == status
    if status == 400:
        assert (body["error"]["param"], body["error"]["code"]) == ("n", "policy_cap_exceeded")
        assert upstream.state.requests == []


async def test_defaults_fill_absent_parameters_only(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_with_policy(
        start_gateway, upstream, {"caps": {"defaults": {"temperature": 0.2, "top_p": 0.9}}}
    )

    await post(gateway, chat_body(temperature=0.7))

    sent = upstream.state.requests[-1].body
    assert (sent["temperature"], sent["top_p"]) == (0.7, 0.9)


async def test_forbidden_parameter_and_model_are_refused(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_with_policy(
        start_gateway,
        upstream,
        {"caps": {"forbidden_params": ["logit_bias"], "allowed_models": [MODEL]}},
    )

    forbidden, _, body = await post(gateway, chat_body(logit_bias={"1": 2}))
    other_model, _, other = await post(gateway, chat_body(model=OPENAI_MODEL))

    assert (forbidden, body["error"]["param"]) == (400, "logit_bias")
    assert body["error"]["code"] == "parameter_not_allowed"
    assert (other_model, other["error"]["code"]) == (404, "model_not_found")
    assert upstream.state.requests == []


def estimate(messages: list[dict[str, Any]]) -> int:
    return estimate_prompt_tokens(
        parse_chat_request(json.dumps(chat_body(messages=messages)).encode())
    )


async def start_with_window(
    start_gateway: StartGateway, upstream: RunningUpstream, window: int
) -> RunningGateway:
    raw = config_dict(upstream.url)
    raw["models"][MODEL]["context_window"] = window
    return await start_gateway(raw)


MESSAGES = [
    {"role": "system", "content": "s" * 40},
    {"role": "user", "content": "old question " * 10},
    {"role": "assistant", "content": "old answer " * 10},
    {"role": "user", "content": "new question " * 4},
]


@pytest.mark.parametrize(("slack", "status"), [(0, 200), (-1, 400)], ids=["fits", "one-over"])
async def test_context_window_boundary_with_error_behaviour(
    start_gateway: StartGateway, upstream: RunningUpstream, slack: int, status: int
) -> None:
    window = estimate(MESSAGES) + 50 + slack
    gateway = await start_with_window(start_gateway, upstream, window)

    got, _, body = await post(gateway, chat_body(messages=MESSAGES, max_tokens=50))

    assert got == status
    if status == 400:
        assert body["error"]["code"] == "context_length_exceeded"
        assert upstream.state.requests == []


async def test_truncate_drops_oldest_turns_keeping_system_and_last_user_message(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    kept = [MESSAGES[0], MESSAGES[3]]
    gateway = await start_with_window(start_gateway, upstream, estimate(kept) + 50)

    status, headers, _ = await post(
        gateway,
        chat_body(messages=MESSAGES, max_tokens=50, context_length_exceeded_behavior="truncate"),
    )

    assert status == 200
    assert headers["x-gateway-truncated-messages"] == "2"
    assert upstream.state.requests[-1].body["messages"] == kept


async def test_truncate_that_cannot_fit_is_still_an_error(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    kept = [MESSAGES[0], MESSAGES[3]]
    gateway = await start_with_window(start_gateway, upstream, estimate(kept) + 49)

    status, _, body = await post(
        gateway,
        chat_body(messages=MESSAGES, max_tokens=50, context_length_exceeded_behavior="truncate"),
    )

    assert (status, body["error"]["code"]) == (400, "context_length_exceeded")
    assert upstream.state.requests == []


async def test_truncation_is_done_by_the_gateway_for_upstreams_that_cannot(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["models"][OPENAI_MODEL]["context_window"] = estimate([MESSAGES[0], MESSAGES[3]]) + 50
    gateway = await start_gateway(raw)

    status, _, _ = await post(
        gateway,
        chat_body(
            model=OPENAI_MODEL,
            messages=MESSAGES,
            max_tokens=50,
            context_length_exceeded_behavior="truncate",
        ),
    )

    sent = upstream.state.requests[-1].body
    assert status == 200
    assert "context_length_exceeded_behavior" not in sent  # enforced here, not sent
    assert len(sent["messages"]) == 2


@pytest.mark.parametrize(
    ("params", "status"), [({"temperature": 7}, 400), ({"model": "nope"}, 404)]
)
async def test_refusals_of_a_team_under_forced_hipaa_are_audited_as_hipaa(
    start_gateway: StartGateway, upstream: RunningUpstream, params: dict[str, Any], status: int
) -> None:
    gateway = await start_with_policy(start_gateway, upstream, {"compliance": {"force": "hipaa"}})

    got, _, _ = await post(gateway, chat_body(**params))

    assert got == status
    assert gateway.log_records("audit")[-1]["compliance"] == "hipaa"
