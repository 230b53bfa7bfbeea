"""The teams of a configuration as the request path sees them: a name and the composition of
the team's policies, built once at start-up for the stages that need them (authentication
hands the team on; routing and policy read its rules)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.policies import TeamPolicy, compose

NO_POLICY = TeamPolicy(names=())


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    policy: TeamPolicy = NO_POLICY

    @property
    def forces_hipaa(self) -> bool:
        return self.policy.force_hipaa


def teams_of(config: GatewayConfig) -> dict[str, Team]:
    return {
        name: Team(name, compose(team.policies, config.policies)[0] if team.policies else NO_POLICY)
        for name, team in config.teams.items()
    }
