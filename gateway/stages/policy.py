"""Policy stage: the team's composed policies applied to one request.

In order: model restriction, forbidden parameters, defaults for absent parameters, caps on
`max_tokens` and `n` (clamped, and said so in `x-gateway-clamped-params`, or refused), the
compliance regime (HIPAA when the client asks or the policy forces it) and the safety model
(the policy's, or the client's when the policy lets it choose). Gateway-enforced parameters
are then cleared from the request unless every upstream of the route also takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.contract import ChatCompletionRequest
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.policies import SafetyPolicy, TeamPolicy, compose
from gateway.routing import Route

_NO_POLICY = TeamPolicy(names=())


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    route: Route  # the HIPAA view of the route when the request is under HIPAA
    hipaa: bool
    # The safety model the gateway must ask itself; None when none applies or when the
    # upstream checks natively.
    safety_model: str | None
    safety: SafetyPolicy | None
    clamped: tuple[str, ...]


class PolicyStage:
    def __init__(self, config: GatewayConfig) -> None:
        self._teams = {
            name: compose(team.policies, config.policies)[0] if team.policies else _NO_POLICY
            for name, team in config.teams.items()
        }
        self._models = set(config.models)

    def policies_of(self, team: str) -> tuple[str, ...]:
        return self._teams[team].names

    def forces_hipaa(self, team: str) -> bool:
        """Known as soon as the key is, so even a refusal of the request is audited as
        HIPAA."""
        return self._teams[team].force_hipaa

    def under_hipaa(self, team: str, request: ChatCompletionRequest) -> bool:
        return self.forces_hipaa(team) or request.compliance == "hipaa"

    def apply(self, team: str, route: Route, request: ChatCompletionRequest) -> PolicyDecision:
        policy = self._teams[team]
        if policy.allowed_models is not None and route.model not in policy.allowed_models:
            raise ModelNotFound(
                "The model does not exist or this team may not use it. "
                "GET /v1/models lists the models available to your key.",
                param="model",
            )
        for param in sorted(policy.forbidden_params):
            if getattr(request, param) is not None:
                raise InvalidRequest(
                    f"Parameter '{param}' is not allowed for this team by policy.",
                    param=param,
                    code="parameter_not_allowed",
                )
        for param, value in policy.defaults:
            if getattr(request, param) is None:
                setattr(request, param, value)
        clamped = self._caps(policy, request)

        hipaa = self.under_hipaa(team, request)
        if hipaa:
            if route.hipaa is None:
                raise InvalidRequest(
                    f"Model '{route.model}' has no HIPAA-eligible upstream; the request was "
                    "not sent anywhere.",
                    param="compliance" if request.compliance else "model",
                    code="hipaa_unavailable",
                )
            route = route.hipaa
            request.compliance = "hipaa"

        native_safety = "safety_model" in route.native
        safety_model = self._safety_model(policy, request, native_safety)
        # Enforced here; sent on only to upstreams that enforce them too.
        request.safety_model = safety_model if native_safety else None
        if "compliance" not in route.native:
            request.compliance = None
        return PolicyDecision(
            route=route,
            hipaa=hipaa,
            safety_model=None if native_safety else safety_model,
            safety=policy.safety,
            clamped=clamped,
        )

    def _caps(self, policy: TeamPolicy, request: ChatCompletionRequest) -> tuple[str, ...]:
        clamped: list[str] = []
        for param, cap in (("max_tokens", policy.max_tokens), ("n", policy.n)):
            if cap is None:
                continue
            value = getattr(request, param)
            if value is None:
                if param == "max_tokens":  # an absent max_tokens would not be bounded
                    request.max_tokens = cap.limit
                continue
            if value <= cap.limit:
                continue
            if cap.action == "reject":
                raise InvalidRequest(
                    f"'{param}' may be at most {cap.limit} for this team (policy).",
                    param=param,
                    code="policy_cap_exceeded",
                )
            setattr(request, param, cap.limit)
            clamped.append(param)
        return tuple(clamped)

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
