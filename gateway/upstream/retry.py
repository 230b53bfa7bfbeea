"""When a failed attempt may be retried: which failures, how many retries may be in flight
across the whole gateway (a budget, so a failing upstream does not double the load on the
others), and how long to wait first."""

from __future__ import annotations

import random

from gateway.config import RetryConfig

# Upstream statuses worth trying elsewhere: overloaded, timed out, rate limited. 529 is
# Anthropic's `overloaded_error`: a 503 by another number, and treated as one.
RETRYABLE_STATUSES = frozenset({429, 503, 504, 529})


class RetryBudget:
    """Retries in flight may not exceed `budget_ratio` of the calls in flight, with a floor
    of `budget_min` (Envoy's retry budget)."""

    def __init__(self, config: RetryConfig) -> None:
        self.active_calls = 0
        self.active_retries = 0
        self.configure(config)

    def configure(self, config: RetryConfig) -> None:
        """New bounds (a reload); the calls and retries in flight are still counted."""
        self._ratio = config.budget_ratio
        self._minimum = config.budget_min

    def try_acquire(self) -> bool:
        if self.active_retries >= max(self._minimum, int(self._ratio * self.active_calls)):
            return False
        self.active_retries += 1
        return True

    def release(self) -> None:
        self.active_retries -= 1


def backoff_s(
    retry: int, config: RetryConfig, rng: random.Random, retry_after_s: float | None
) -> float:
    """Full-jitter exponential backoff before retry number `retry` (1-based), never shorter
    than the upstream's own Retry-After."""
    ceiling = min(config.backoff_max_ms, config.backoff_base_ms * 2 ** (retry - 1)) / 1000
    wait = rng.uniform(0, ceiling)
    return max(wait, retry_after_s or 0.0)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; dates are not used by LLM
    APIs); None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
