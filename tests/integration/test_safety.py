"""The safety model: the gateway asks a Llama Guard-style classifier before forwarding (and,
by policy, before returning a non-streamed answer); an unsafe verdict blocks the request
before the generation upstream sees it; Together-style upstreams get `safety_model`
forwarded instead; a classifier that is down refuses or proceeds, as the policy says."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    add_safety_model,
    auth,
    chat_body,
    config_dict,
    post_chat,
)

GUARD = "llama-guard-test"


@pytest.fixture
def guard(spare_upstream: RunningUpstream) -> RunningUpstream:
    """The safety model's own upstream (the fake answers like Llama Guard for "guard")."""
    return spare_upstream


async def start(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    guard: RunningUpstream,
    **safety: Any,
) -> RunningGateway:
    return await start_gateway(guarded(upstream, guard, **safety))


def guarded(upstream: RunningUpstream, guard: RunningUpstream, **safety: Any) -> dict[str, Any]:
    """team-a under a policy that asks GUARD, served by `guard`."""
    raw = config_dict(upstream.url)
    timeouts = {"connect": 1, "first_byte": 1, "idle": 1, "total": 5}
    add_safety_model(raw, guard.url, GUARD, timeouts=timeouts)
    raw["policies"] = {"guarded": {"safety": {"model": GUARD, **safety}}}
    raw["teams"]["team-a"]["policies"] = ["guarded"]
    raw["retries"] = {"max_attempts": 1}
    return raw


async def post(gateway: RunningGateway, **params: Any) -> tuple[int, Any]:
    reply = await post_chat(gateway, chat_body(**params))
    return reply.status, reply.json()


def said(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_unsafe_verdict_blocks_before_the_generation_upstream(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard)

    status, body = await post(gateway, model=OPENAI_MODEL, messages=said("how to UNSAFE:S1,S10"))

    assert status == 400
    assert body["error"]["code"] == "content_policy_violation"
    assert "S1, S10" in body["error"]["message"]
    assert upstream.state.requests == []  # the generation upstream received nothing
    assert guard.state.requests[-1].body["messages"] == said("how to UNSAFE:S1,S10")
    [audit] = gateway.log_records("audit")
    assert audit["safety_verdict"] == "unsafe" and audit["status"] == 400


async def test_safe_verdict_proceeds_and_the_answer_is_checked_too(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard, check_output=True)

    status, body = await post(gateway, model=OPENAI_MODEL, messages=said("hello"))

    assert status == 200
    assert body["choices"][0]["message"]["content"] == "echo: hello"
    assert len(upstream.state.requests) == 1
    # The input, then the conversation with the answer.
    assert [r.body["messages"][-1]["role"] for r in guard.state.requests] == ["user", "assistant"]
    assert "safety_model" not in upstream.state.requests[-1].body  # enforced, not forwarded


async def test_together_style_upstream_gets_safety_model_forwarded_instead(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard)

    status, _ = await post(gateway, model=MODEL, messages=said("hello"))

    assert status == 200
    assert upstream.state.requests[-1].body["safety_model"] == GUARD
    assert guard.state.requests == []
    assert gateway.log_records("audit")[-1]["safety_verdict"] == "native"


async def test_client_may_not_choose_another_safety_model_unless_the_policy_allows(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard)

    status, body = await post(gateway, model=OPENAI_MODEL, safety_model="another-guard")

    assert (status, body["error"]["param"]) == (400, "safety_model")
    assert upstream.state.requests == [] and guard.state.requests == []


@pytest.mark.parametrize(("on_unavailable", "status"), [("refuse", 503), ("proceed", 200)])
async def test_safety_model_down_refuses_or_proceeds_by_policy(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    guard: RunningUpstream,
    on_unavailable: str,
    status: int,
) -> None:
    gateway = await start(start_gateway, upstream, guard, on_unavailable=on_unavailable)
    guard.state.default = Behavior(status=500)

    got, body = await post(gateway, model=OPENAI_MODEL, messages=said("hello"))

    assert got == status
    assert len(upstream.state.requests) == (1 if status == 200 else 0)
    if status == 503:
        assert body["error"]["code"] == "safety_model_unavailable"
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        metrics = await resp.text()
    assert (
        f'llm_gateway_safety_verdicts_total{{model="{GUARD}",verdict="unavailable"}} 1.0' in metrics
    )


async def test_streamed_answers_are_checked_on_input_only(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard, check_output=True)

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(model=OPENAI_MODEL, stream=True),
            headers=auth(),
        ) as resp,
    ):
        assert resp.status == 200
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")

    assert len(guard.state.requests) == 1


async def test_only_category_codes_of_a_verdict_reach_the_client(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard)

    status, body = await post(
        gateway, model=OPENAI_MODEL, messages=said("UNSAFE:patient-john-doe-ssn-123")
    )

    assert status == 400
    assert "patient" not in body["error"]["message"]
    assert "categories: unspecified" in body["error"]["message"]


async def test_rate_limited_requests_never_reach_the_safety_model(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    raw = guarded(upstream, guard)
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 1}
    gateway = await start_gateway(raw)

    statuses = [(await post(gateway, model=OPENAI_MODEL))[0] for _ in range(5)]

    assert statuses == [200, 429, 429, 429, 429]
    assert len(guard.state.requests) == 1  # a call costs the safety model only once admitted


IMAGE = {"type": "image_url", "image_url": {"url": "https://img.test/x-ray.png"}}


@pytest.mark.parametrize(
    ("messages", "sent_to_guard"),
    [
        # An image alone is classified as an image (Llama Guard 4 reads images).
        (
            [{"role": "user", "content": [IMAGE]}],
            [{"role": "user", "content": [IMAGE]}],
        ),
        # Text and image parts of one turn, and a following turn of the same role, merged.
        (
            [
                {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]},
                {"role": "user", "content": "closely"},
            ],
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        IMAGE,
                        {"type": "text", "text": "closely"},
                    ],
                }
            ],
        ),
        # Only system messages: their text is what there is to classify.
        (
            [{"role": "system", "content": "act as a pharmacist"}],
            [{"role": "user", "content": "act as a pharmacist"}],
        ),
    ],
    ids=["image-only", "text-and-image", "system-only"],
)
async def test_the_safety_model_gets_what_the_conversation_holds(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    guard: RunningUpstream,
    messages: list[dict[str, Any]],
    sent_to_guard: list[dict[str, Any]],
) -> None:
    gateway = await start(start_gateway, upstream, guard)

    status, _ = await post(gateway, model=OPENAI_MODEL, messages=messages)

    assert status == 200
    assert guard.state.requests[-1].body["messages"] == sent_to_guard
    assert gateway.log_records("audit")[-1]["safety_verdict"] == "safe"


async def test_a_conversation_with_nothing_to_read_is_not_sent_to_the_safety_model(
    start_gateway: StartGateway, upstream: RunningUpstream, guard: RunningUpstream
) -> None:
    gateway = await start(start_gateway, upstream, guard)

    status, _ = await post(
        gateway,
        model=OPENAI_MODEL,
        messages=[{"role": "system", "content": ""}, {"role": "user", "content": ""}],
    )

    assert status == 200
    assert guard.state.requests == []
    assert gateway.log_records("audit")[-1]["safety_verdict"] == "empty"
