"""Choosing an upstream for one attempt: by weight among the healthy ones not yet tried by
this request, preferring those with a free connection in the gateway's pool (a full pool
would make the request wait while another upstream could serve it at once), and of two
random picks the less loaded (the power of two choices: nearly the balance of
least-outstanding, without a scan or shared ordering)."""

from __future__ import annotations

import random
from collections.abc import Callable

from gateway.routing import Route, UpstreamTarget
from gateway.upstream.health import HealthBook


class Balancer:
    def __init__(
        self,
        health: HealthBook,
        rng: random.Random | None = None,
        has_free_connection: Callable[[str], bool] | None = None,
    ) -> None:
        self._health = health
        self._rng = rng or random.Random()  # noqa: S311 (load spreading, not secrecy)
        self._has_free = has_free_connection or (lambda name: True)

    def candidates(self, route: Route, tried: set[str]) -> list[UpstreamTarget]:
        """The upstreams this attempt may use: those not tried yet by the call (all, once
        each was), the healthy ones among them (all, when every one is ejected: the health
        book avoids that, but cool-downs can overlap, and failing the request is worse)."""
        targets = route.targets
        fresh = [t for t in targets if t.upstream_name not in tried] or list(targets)
        return [t for t in fresh if self._health.available(t.upstream_name)] or fresh

    def pick(self, route: Route, tried: set[str]) -> UpstreamTarget:
        targets = route.targets
        if len(targets) == 1:
            return targets[0]
        candidates = self.candidates(route, tried)
        if len(candidates) > 1:
            # When every pool is full, the request waits for the pick's (see caller).
            candidates = [t for t in candidates if self._has_free(t.upstream_name)] or candidates
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.choices(candidates, weights=[t.weight for t in candidates], k=2)
        state = self._health.state
        # On a tie (idle upstreams) the first, drawn by weight, wins: the weights hold.
        return min((first, second), key=lambda t: state[t.upstream_name].outstanding / t.weight)
