"""Policy stage: the team's composed policies applied to one request, and the one place the
request's compliance regime is decided.

In order: forbidden parameters, defaults for absent parameters, caps on `max_tokens` and
`n` (clamped, and said so in `x-gateway-clamped-params`, or refused), the compliance regime
(HIPAA when the client asks or the policy forces it: the route narrows to its
HIPAA-eligible upstreams), the safety model (the policy's, or the client's when the
policy lets it choose) and the request's class for model capacity (`x-gateway-priority:
low|normal`, else the team's `priority`; low refused when a policy forbids it). Which
models a policy allows is decided by the route stage, the one owner of model access.

Reads: `team`, `request`, `route`. Writes: `hipaa_decision` first (so that a request this
stage refuses is still handled and audited under its regime), then `policy`, with the
request as the policy leaves it (a new value: the client's own request is never edited).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gateway.config import GatewayConfig
from gateway.contract import ChatCompletionRequest
from gateway.errors import InvalidRequest
from gateway.pipeline import Exchange, Stage, need
from gateway.policies import SafetyPolicy, TeamPolicy
from gateway.routing import Claimant, Route
from gateway.teams import Team

PRIORITY_HEADER = "x-gateway-priority"
_CLASSES = {"low": True, "normal": False}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    request: ChatCompletionRequest  # with the policy's defaults and caps applied
    route: Route  # the HIPAA view of the route when the request is under HIPAA
    # The safety model that applies (None: none), and whether the upstream enforces it
    # natively (then it is forwarded) rather than the gateway asking it.
    safety_model: str | None
    native_safety: bool
    safety: SafetyPolicy | None
    clamped: tuple[str, ...]
    # Whose line the call waits in for model capacity, in which class.
    claimant: Claimant | None = None


class PolicyStage(Stage):
    name = "policy"

    def __init__(self, config: GatewayConfig) -> None:
        self._models = frozenset(config.models)

    async def enter(self, exchange: Exchange) -> None:
        team = need(exchange.team, "the team")
        request = need(exchange.request, "the request")
        route = need(exchange.route, "the route")
        hipaa = team.forces_hipaa or request.compliance == "hipaa"
        exchange.hipaa_decision = hipaa
        decision = self.decide(team.policy, route, request, hipaa)
        claimant = _claimant(team, exchange.http.headers.get(PRIORITY_HEADER))
        exchange.policy = decision if claimant is None else replace(decision, claimant=claimant)

    def decide(
        self, policy: TeamPolicy, route: Route, request: ChatCompletionRequest, hipaa: bool
    ) -> PolicyDecision:
        for param in sorted(policy.forbidden_params):
            if getattr(request, param) is not None:
                raise InvalidRequest(
                    f"Parameter '{param}' is not allowed for this team by policy.",
                    param=param,
                    code="parameter_not_allowed",
                )
        changes: dict[str, Any] = {
            param: value for param, value in policy.defaults if getattr(request, param) is None
        }
        clamped = _caps(policy, request, changes)

        if hipaa:
            if route.hipaa is None:
                raise InvalidRequest(
                    f"Model '{route.model}' has no HIPAA-eligible upstream; the request was "
                    "not sent anywhere.",
                    param="compliance" if request.compliance else "model",
                    code="hipaa_unavailable",
                )
            route = route.hipaa
            if request.compliance is None:
                changes["compliance"] = "hipaa"

        native_safety = "safety_model" in route.native
        safety_model = self._safety_model(policy, request, native_safety)
        if safety_model != request.safety_model:
            changes["safety_model"] = safety_model
        return PolicyDecision(
            request=request.model_copy(update=changes) if changes else request,
            route=route,
            safety_model=safety_model,
            native_safety=native_safety,
            safety=policy.safety,
            clamped=clamped,
        )

    def _safety_model(
        self, policy: TeamPolicy, request: ChatCompletionRequest, native: bool
    ) -> str | None:
        chosen = request.safety_model
        known = native or chosen in self._models  # a native upstream knows its own
        if policy.safety is None:
            if chosen is not None and not known:
                raise InvalidRequest(
                    "'safety_model' names no safety model this gateway knows.",
                    param="safety_model",
                )
            return chosen
        if chosen is None or chosen == policy.safety.model:
            return policy.safety.model
        if not policy.safety.client_may_choose or not known:
            raise InvalidRequest(
                f"This team's policy requires the safety model '{policy.safety.model}'.",
                param="safety_model",
                code="parameter_not_allowed",
            )
        return chosen


def _claimant(team: Team, asked: str | None) -> Claimant | None:
    """The team's claimant in the class the request asks for; None when that is the
    team's own class (the common case: nothing to build)."""
    claimant = team.queue_claimant
    if asked is None:
        low = claimant.low_priority
    elif asked.lower() in _CLASSES:
        low = _CLASSES[asked.lower()]
    else:
        raise InvalidRequest(
            f"Header '{PRIORITY_HEADER}' must be 'low' or 'normal'.",
            param=PRIORITY_HEADER,
        )
    if low and not team.policy.allow_low_priority:
        raise InvalidRequest(
            "This team's policy does not allow low-priority requests.",
            param=PRIORITY_HEADER,
            code="parameter_not_allowed",
        )
    if low == claimant.low_priority:
        return None
    return replace(claimant, low_priority=low)


def _caps(
    policy: TeamPolicy, request: ChatCompletionRequest, changes: dict[str, Any]
) -> tuple[str, ...]:
    """Adds the capped values to `changes`; the names of the clamped parameters."""
    clamped: list[str] = []
    for param, cap in (("max_tokens", policy.max_tokens), ("n", policy.n)):
        if cap is None:
            continue
        value = changes.get(param, getattr(request, param))
        if value is None:
            if param == "max_tokens":  # an absent max_tokens would not be bounded
                changes[param] = cap.limit
            continue
        if value <= cap.limit:
            continue
        if cap.action == "reject":
            raise InvalidRequest(
                f"'{param}' may be at most {cap.limit} for this team (policy).",
                param=param,
                code="policy_cap_exceeded",
            )
        changes[param] = cap.limit
        clamped.append(param)
    return tuple(clamped)
