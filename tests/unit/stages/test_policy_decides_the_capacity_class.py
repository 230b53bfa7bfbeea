"""The policy stage decides a request's class for model capacity: `x-gateway-priority`
(low or normal, any case) over the team's `priority`; any other value is a 400 naming the
header (never quoting it); a policy with `priority.allow_low: false` refuses low. The
team's share and queue bounds come with it, the team's own over the `queue:` defaults."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.routing import Claimant
from gateway.stages.policy import PolicyStage
from gateway.stages.route import Router
from gateway.teams import teams_of
from tests.conftest import MODEL, a_request, an_exchange, unit_config


async def claimant_for(header: str | None, **team: Any) -> Claimant:
    def mutate(raw: dict[str, Any]) -> None:
        raw["queue"] = {"max_wait_ms": 2000, "max_depth": 30}
        policy = team.pop("policy", None)
        if policy is not None:
            raw["policies"] = {"p": policy}
            raw["teams"]["team-a"]["policies"] = ["p"]
        raw["teams"]["team-a"].update(team)

    config = unit_config(mutate)
    team_a = teams_of(config)["team-a"]
    exchange = an_exchange(
        headers={} if header is None else {"x-gateway-priority": header},
        team=team_a,
        request=a_request(),
        route=Router(config).resolve("team-a", MODEL),
    )
    await PolicyStage(config).enter(exchange)
    assert exchange.policy is not None
    return exchange.policy.claimant or team_a.queue_claimant


async def test_the_team_default_class_share_and_bounds() -> None:
    claimant = await claimant_for(None, share=3, queue={"max_depth": 5})
    assert claimant == Claimant("team-a", share=3, low_priority=False, max_wait_s=2, max_depth=5)
    assert (await claimant_for(None, priority="low")).low_priority


@pytest.mark.parametrize(("header", "low"), [("low", True), ("LOW", True), ("normal", False)])
async def test_the_header_chooses_the_class(header: str, low: bool) -> None:
    assert (await claimant_for(header)).low_priority is low
    assert (await claimant_for(header, priority="low")).low_priority is low


async def test_an_unknown_class_is_refused_naming_the_header_not_quoting_it() -> None:
    with pytest.raises(InvalidRequest) as refused:
        await claimant_for("urgent-secret-value")
    assert refused.value.param == "x-gateway-priority"
    assert "urgent-secret-value" not in refused.value.message


async def test_a_policy_can_forbid_the_low_class() -> None:
    policy = {"priority": {"allow_low": False}}
    with pytest.raises(InvalidRequest) as refused:
        await claimant_for("low", policy=policy)
    assert refused.value.code == "parameter_not_allowed"
    with pytest.raises(InvalidRequest):
        await claimant_for(None, policy=policy, priority="low")
    assert not (await claimant_for("normal", policy=policy)).low_priority
