"""The teams of a configuration as the request path sees them: a name and the composition of
the team's policies, built once per configuration (at start-up and at each reload) for the
stages that need them (authentication hands the team on; routing and policy read its
rules).

Also the teams' keys and their expiry. A key may carry `not_after` (see
`config.TeamKey`): `team_keys` turns it, once per configuration, into the epoch second from
which the key is refused, so the request path compares two floats and never parses a date.
`KeyExpiryLog` tells the operator: at start-up and at each reload it warns of every key
that expires within `EXPIRY_WARNING_S` (`team_key_expiring`), and it logs each key's expiry
once per process (`team_key_expired`), when it happens or, for a key that expired while
the gateway was down, at the next start-up or reload. Log lines name the team and the key's
fingerprint (the first 8 hex digits of its hash, as the audit line does), never a key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from structlog.typing import FilteringBoundLogger

from gateway.config import GatewayConfig
from gateway.policies import TeamPolicy, compose
from gateway.routing import Claimant

T = TypeVar("T")

NO_POLICY = TeamPolicy(names=())
# Keys expiring within this are warned of at start-up and at each reload.
EXPIRY_WARNING_S = 7 * 24 * 3600.0
# The longest the expiry timer sleeps before looking at the wall clock again: the event
# loop's timers run on the monotonic clock, which drifts from the wall clock over weeks.
_LONGEST_SLEEP_S = 3600.0
# Hex digits of a key's SHA-256 that logs and the audit line may hold: enough to tell keys
# apart in an investigation, far too few to find a key by.
FINGERPRINT_HEX = 8


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    policy: TeamPolicy = NO_POLICY
    # How its calls wait for model capacity (the class: its default; see `upstream.capacity`).
    claimant: Claimant | None = None

    @property
    def queue_claimant(self) -> Claimant:
        return Claimant(self.name) if self.claimant is None else self.claimant

    @property
    def forces_hipaa(self) -> bool:
        return self.policy.force_hipaa


@dataclass(frozen=True, slots=True)
class TeamKey:
    """One key as the request path needs it."""

    team: Team
    digest: bytes
    # Epoch seconds (UTC) from which the key is refused; None: never.
    refused_from: float | None
    # As configured, for log lines.
    not_after: str | None

    @property
    def fingerprint(self) -> str:
        return self.digest.hex()[:FINGERPRINT_HEX]


def teams_of(config: GatewayConfig) -> dict[str, Team]:
    return {
        name: Team(
            name,
            compose(team.policies, config.policies)[0] if team.policies else NO_POLICY,
            Claimant(
                name,
                share=team.share,
                low_priority=team.priority == "low",
                max_wait_s=_first(team.queue.max_wait_ms, config.queue.max_wait_ms) / 1000,
                max_depth=_first(team.queue.max_depth, config.queue.max_depth),
            ),
        )
        for name, team in config.teams.items()
    }


def _first(own: T | None, default: T) -> T:
    return default if own is None else own


def team_keys(config: GatewayConfig, teams: dict[str, Team] | None = None) -> list[TeamKey]:
    """Every key of every team (the configuration checked that no key has two teams)."""
    teams = teams or teams_of(config)
    keys: list[TeamKey] = []
    for name, team in config.teams.items():
        for key in team.key_hashes:
            refused = key.refused_from
            keys.append(
                TeamKey(
                    team=teams[name],
                    digest=bytes.fromhex(key.hash),
                    refused_from=None if refused is None else refused.timestamp(),
                    not_after=None if key.not_after is None else key.not_after.isoformat(),
                )
            )
    return keys


class KeyExpiryLog:
    """Logs the keys of the configuration in force as they near and pass their
    `not_after`. One per process, so that an expiry already logged is not logged again
    after a reload; `watch` is given each new configuration's keys (on the event loop)."""

    def __init__(self, log: FilteringBoundLogger, clock: Callable[[], float] = time.time) -> None:
        self._log = log
        self._clock = clock
        self._keys: tuple[TeamKey, ...] = ()
        # Digests whose expiry was logged.
        self._logged: set[bytes] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, keys: Sequence[TeamKey]) -> None:
        """The keys now in force: warns of those expiring soon, logs those expired, and
        sets the timer for the next expiry."""
        self._keys = tuple(key for key in keys if key.refused_from is not None)
        now = self._clock()
        for key in self._keys:
            assert key.refused_from is not None
            left = key.refused_from - now
            if 0 < left <= EXPIRY_WARNING_S:
                self._log.warning(
                    "team_key_expiring",
                    team=key.team.name,
                    key_fingerprint=key.fingerprint,
                    not_after=key.not_after,
                    expires_in_s=round(left),
                )
        self._check()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self.close()
        now = self._clock()
        upcoming = []
        for key in self._keys:
            assert key.refused_from is not None
            if key.refused_from > now:
                upcoming.append(key.refused_from)
            elif key.digest not in self._logged:
                self._logged.add(key.digest)
                self._log.warning(
                    "team_key_expired",
                    team=key.team.name,
                    key_fingerprint=key.fingerprint,
                    not_after=key.not_after,
                )
        if upcoming:
            wait = min(min(upcoming) - now, _LONGEST_SLEEP_S)
            self._timer = asyncio.get_running_loop().call_later(wait, self._check)
