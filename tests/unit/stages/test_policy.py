"""The policy stage on its own: it decides the compliance regime once (before anything it
may refuse), narrows the route to HIPAA-eligible upstreams, applies defaults and caps to a
new request value, and picks the safety model; the client's request is never edited."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.pipeline import Exchange
from gateway.stages.policy import PolicyStage
from gateway.stages.route import Router
from gateway.teams import teams_of
from tests.conftest import MODEL, OPENAI_MODEL, a_request, an_exchange, unit_config

GUARD = "guard-model"


def with_guard(raw: dict[str, Any]) -> None:
    raw["models"][GUARD] = {"upstreams": [{"upstream": "fake-openai"}]}


def exchange_with(policy: dict[str, Any], model: str = MODEL, **params: Any) -> Exchange:
    def mutate(raw: dict[str, Any]) -> None:
        with_guard(raw)
        raw["policies"] = {"p": policy}
        raw["teams"]["team-a"]["policies"] = ["p"]

    config = unit_config(mutate)
    team = teams_of(config)["team-a"]
    return an_exchange(
        team=team,
        request=a_request(model=model, **params),
        route=Router(config).resolve("team-a", model),
    )


def stage() -> PolicyStage:
    return PolicyStage(unit_config(with_guard))


async def test_defaults_and_caps_make_a_new_request_and_leave_the_clients_alone() -> None:
    exchange = exchange_with(
        {"caps": {"max_tokens": {"limit": 10, "action": "clamp"}, "defaults": {"top_p": 0.5}}},
        max_tokens=99,
    )
    client_sent = exchange.request
    assert client_sent is not None

    await stage().enter(exchange)

    assert exchange.policy is not None
    assert (exchange.policy.request.max_tokens, exchange.policy.request.top_p) == (10, 0.5)
    assert exchange.policy.clamped == ("max_tokens",)
    assert client_sent is exchange.request
    assert (client_sent.max_tokens, client_sent.top_p) == (99, None)


async def test_hipaa_is_decided_before_a_refusal_of_the_same_stage() -> None:
    exchange = exchange_with({"caps": {"n": {"limit": 1}}}, compliance="hipaa", n=2)

    with pytest.raises(InvalidRequest) as refused:
        await stage().enter(exchange)

    assert refused.value.code == "policy_cap_exceeded"
    assert exchange.hipaa_decision is True and exchange.hipaa


async def test_forced_hipaa_narrows_the_route_to_eligible_upstreams() -> None:
    exchange = exchange_with({"compliance": {"force": "hipaa"}})

    await stage().enter(exchange)

    assert exchange.policy is not None and exchange.hipaa
    assert [t.upstream_name for t in exchange.policy.route.targets] == ["fake"]
    assert exchange.policy.request.compliance == "hipaa"


async def test_hipaa_on_a_model_without_an_eligible_upstream_is_refused() -> None:
    exchange = exchange_with({}, model=OPENAI_MODEL, compliance="hipaa")

    with pytest.raises(InvalidRequest) as refused:
        await stage().enter(exchange)

    assert (refused.value.code, refused.value.param) == ("hipaa_unavailable", "compliance")
    assert exchange.hipaa


async def test_the_policys_safety_model_applies_and_a_native_upstream_enforces_it() -> None:
    gateway_checked = exchange_with({"safety": {"model": GUARD}}, model=OPENAI_MODEL)
    native = exchange_with({"safety": {"model": GUARD}}, model=MODEL)

    await stage().enter(gateway_checked)
    await stage().enter(native)

    assert gateway_checked.policy is not None and native.policy is not None
    assert (gateway_checked.policy.safety_model, gateway_checked.policy.native_safety) == (
        GUARD,
        False,
    )
    assert (native.policy.safety_model, native.policy.native_safety) == (GUARD, True)
