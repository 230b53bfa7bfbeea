"""Route stage: a team's requested model name or alias to the model and its upstreams, and
the one owner of "may this team use this model" (the team's `models` and its policies'
`allowed_models`), which `/v1/models` asks too.

All routes are resolved once per configuration (at start-up and at each reload) into one
dict per team, so a request costs one lookup. A model that does not exist and a model the
team may not use give the same 404: the answer must not reveal which models other teams
have. Each route also carries its HIPAA view: the same model restricted to upstreams that
are `hipaa_eligible` and reached over TLS, so a request under HIPAA can reach no other
upstream, not even on a retry.

Reads: `team`, `request` (its model). Writes: `route`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

from gateway.config import GatewayConfig, SecurityConfig, UpstreamConfig
from gateway.dialects import DIALECTS
from gateway.dialects.base import GATEWAY_ENFORCED, Fate
from gateway.errors import ModelNotFound
from gateway.pipeline import Exchange, Stage, need
from gateway.routing import Route, UpstreamTarget
from gateway.teams import teams_of

# A requested model name that is safe to quote back (OpenAI names it in its 404); anything
# else may be a prompt or a key pasted in the wrong field, and is not repeated.
_QUOTABLE_MODEL = re.compile(r"[A-Za-z0-9._:/@-]{1,256}")


class Router(Stage):
    name = "route"

    def __init__(self, config: GatewayConfig) -> None:
        routes: dict[str, Route] = {}
        self._all: dict[str, Route] = {}
        for name, model in config.models.items():
            targets = tuple(
                UpstreamTarget(
                    upstream_name=t.upstream,
                    upstream=config.upstreams[t.upstream],
                    upstream_model=t.model or name,
                    dialect=DIALECTS[config.upstreams[t.upstream].dialect],
                    weight=t.weight,
                )
                for t in model.upstreams
            )
            route = Route(
                model=name,
                config=model,
                targets=targets,
                unsupported=frozenset(
                    param
                    for target in targets
                    for param, fate in target.dialect.fates.items()
                    if fate is Fate.UNSUPPORTED
                ),
                droppable=frozenset(model.drop_params),
                dialects="/".join(sorted({t.dialect.name for t in targets})),
                native=frozenset(
                    param
                    for param in GATEWAY_ENFORCED
                    if all(t.dialect.fates[param] is Fate.PASS for t in targets)
                ),
            )
            eligible = tuple(t for t in targets if _hipaa_eligible(t.upstream, config.security))
            if eligible:
                route = replace(route, hipaa=replace(route, targets=eligible))
            self._all[name] = route
            for label in (name, *model.aliases):
                routes[label] = route
        self._key_hashes = {k.hash for team in config.teams.values() for k in team.key_hashes}
        self._by_team: dict[str, dict[str, Route]] = {}
        for team_name, team in teams_of(config).items():
            listed = config.teams[team_name].models
            allowed = (
                set(config.models) if "*" in listed else {routes[label].model for label in listed}
            )
            if team.policy.allowed_models is not None:
                allowed &= team.policy.allowed_models
            self._by_team[team_name] = {
                label: route for label, route in routes.items() if route.model in allowed
            }

    async def enter(self, exchange: Exchange) -> None:
        team = need(exchange.team, "the team")
        exchange.route = self.resolve(team.name, need(exchange.request, "the request").model)

    def resolve(self, team: str, requested_model: str) -> Route:
        route = self._by_team.get(team, {}).get(requested_model)
        if route is None:
            raise self._not_found(requested_model)
        return route

    def _not_found(self, requested_model: str) -> ModelNotFound:
        """OpenAI's 404, naming the model when it is a plain identifier, unless it is one
        of the teams' keys pasted into the wrong field."""
        quotable = _QUOTABLE_MODEL.fullmatch(requested_model) and (
            hashlib.sha256(requested_model.encode()).hexdigest() not in self._key_hashes
        )
        named = f"`{requested_model}` " if quotable else ""
        return ModelNotFound(
            f"The model {named}does not exist or you do not have access to it. "
            "GET /v1/models lists the models available to your key.",
            param="model",
        )

    def route(self, model: str) -> Route:
        """Any configured model by its public name, whoever asks (the safety model)."""
        return self._all[model]

    def models_for(self, team: str) -> list[Route]:
        """The team's models, each once, in configuration order."""
        seen: dict[str, Route] = {}
        for route in self._by_team.get(team, {}).values():
            seen.setdefault(route.model, route)
        return list(seen.values())


def _hipaa_eligible(upstream: UpstreamConfig, security: SecurityConfig) -> bool:
    if not upstream.hipaa_eligible:
        return False
    if upstream.base_url.scheme == "https":
        return True
    host = upstream.base_url.host or ""
    loopback = host == "localhost" or host.startswith("127.") or host == "[::1]"
    return loopback and security.allow_plaintext_loopback_hipaa
