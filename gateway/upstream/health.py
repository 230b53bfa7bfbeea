"""Passive health of upstreams, judged from real traffic (no probes of our own).

An upstream that fails `consecutive_failures` times in a row (connection error, 5xx,
timeout) is ejected: no new requests for a cool-down that doubles with each ejection up to
`max_ejection_s`. When the cool-down ends it is on probation: real traffic reaches it
again, the first success restores it, the first failure ejects it again at once. An
upstream is never ejected when that would leave one of its models without any upstream:
a degraded answer beats no answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config import HealthConfig


@dataclass(slots=True)
class UpstreamHealth:
    outstanding: int = 0  # requests in flight to it, from this process
    consecutive_failures: int = 0
    ejections: int = 0  # in a row; resets after a success off probation
    # Until when the upstream is out. Attempts that started before then (already on their
    # way when it was ejected, or retries sent to it while out because nothing else was
    # left) say nothing new about it: only the probes after its cool-down decide.
    ejected_until: float = 0.0
    on_probation: bool = False

    def ended(self) -> None:
        """One request to it finished (a stream's end comes long after its attempt)."""
        self.outstanding -= 1


class HealthBook:
    def __init__(
        self,
        config: HealthConfig,
        upstreams_of_model: Mapping[str, list[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.state: dict[str, UpstreamHealth] = {}
        self.remodel(config, upstreams_of_model)

    def remodel(self, config: HealthConfig, upstreams_of_model: Mapping[str, list[str]]) -> None:
        """A new configuration's thresholds and models (a reload). Each upstream keeps its
        state, in-flight requests and ejection included; one no model uses any more keeps
        it too, for the requests still on their way to it."""
        self._config = config
        self._upstreams_of_model = upstreams_of_model
        self._models_of: dict[str, list[str]] = {}
        for model, upstreams in upstreams_of_model.items():
            for name in upstreams:
                self._models_of.setdefault(name, []).append(model)
        for name in self._models_of:
            self.state.setdefault(name, UpstreamHealth())

    def now(self) -> float:
        """The book's clock: when an attempt starts, for `record_success`/`_failure`."""
        return self._clock()

    def available(self, name: str) -> bool:
        return self._clock() >= self.state[name].ejected_until

    def record_success(self, name: str, started: float) -> None:
        """An attempt that started at `started` succeeded."""
        health = self.state[name]
        if started < health.ejected_until:
            return  # sent before its cool-down ended: not the probe that may restore it
        health.consecutive_failures = 0
        if health.on_probation and self.available(name):
            health.on_probation = False
            health.ejections = 0

    def record_failure(self, name: str, started: float) -> bool:
        """Counts the failure of an attempt that started at `started`; True when it
        ejected the upstream. Failures of attempts that started before the cool-down ended
        (a burst already on its way when the upstream was ejected, retries sent to it while
        it was out) are the same incident: they neither eject it again nor double its
        cool-down."""
        health = self.state[name]
        if started < health.ejected_until:
            return False
        health.consecutive_failures += 1
        probe_failed = health.on_probation and self.available(name)
        if health.consecutive_failures < self._config.consecutive_failures and not probe_failed:
            return False
        if self._last_standing(name):
            return False
        health.ejections += 1
        cool_down = self._config.base_ejection_s * 2 ** (health.ejections - 1)
        health.ejected_until = self._clock() + min(cool_down, self._config.max_ejection_s)
        health.on_probation = True
        health.consecutive_failures = 0
        return True

    def _last_standing(self, name: str) -> bool:
        return any(
            not any(
                other != name and self.available(other) for other in self._upstreams_of_model[m]
            )
            for m in self._models_of.get(name, ())
        )

    def in_service(self) -> dict[str, bool]:
        return {name: self.available(name) for name in self.state}

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {
            name: {
                "state": "ejected"
                if now < h.ejected_until
                else ("probation" if h.on_probation else "healthy"),
                "outstanding": h.outstanding,
                "consecutive_failures": h.consecutive_failures,
                "ejections": h.ejections,
                "ejected_for_s": round(max(0.0, h.ejected_until - now), 3),
            }
            for name, h in self.state.items()
        }
