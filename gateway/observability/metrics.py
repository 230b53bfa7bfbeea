"""Prometheus metrics, in the app's own registry (no global default registry), exposed at
`GET /metrics`. Label values come only from configured names (team, model, limit kind),
never from client input, so their number is bounded by the configuration."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "llm_gateway"


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rate_limited = Counter(
            f"{PREFIX}_rate_limited_requests",
            "Requests refused with 429 by the gateway's rate limiter, by the limit that refused.",
            ["team", "model", "limit"],
            registry=self.registry,
        )
        self.limiter_errors = Counter(
            f"{PREFIX}_rate_limiter_errors",
            "Admissions the rate-limit backend (Redis) could not decide in time.",
            registry=self.registry,
        )
        self.limiter_fail_open = Counter(
            f"{PREFIX}_rate_limiter_fail_open",
            "Requests admitted without a limit decision because the backend was unavailable.",
            registry=self.registry,
        )

        self.retries = Counter(
            f"{PREFIX}_upstream_retries",
            "Retries on another upstream, by the upstream that failed and why.",
            ["model", "upstream", "reason"],
            registry=self.registry,
        )
        self.retries_refused = Counter(
            f"{PREFIX}_upstream_retries_over_budget",
            "Retries not made because the retry budget was spent.",
            ["model"],
            registry=self.registry,
        )
        self.ejections = Counter(
            f"{PREFIX}_upstream_ejections",
            "Upstreams ejected by passive health after consecutive failures.",
            ["upstream"],
            registry=self.registry,
        )

        self.safety_verdicts = Counter(
            f"{PREFIX}_safety_verdicts",
            "Safety model verdicts (safe, unsafe, unavailable), by safety model.",
            ["model", "verdict"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
