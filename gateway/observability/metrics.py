"""Prometheus metrics, in the app's own registry (no global default registry), exposed at
`GET /metrics`.

Names follow Prometheus conventions (one prefix, base units, `_total` counters). Where
OpenTelemetry's GenAI semantic conventions name the same quantity, the meaning and unit are
theirs: `request_duration_seconds` is `gen_ai.server.request.duration`,
`time_to_first_token_seconds` is `gen_ai.server.time_to_first_token`, and `tokens_total`
with kind prompt/completion is `gen_ai.client.token.usage` with `gen_ai.token.type`
input/output.

Label values come only from configured names (team, model, upstream) or fixed vocabularies
(status code, limit kind, verdict, reason), never from client input: a request for an
unknown model is counted under model "none". Cardinality is bounded by the configuration.

The registry is the process's. A replica served by several worker processes (`serve
--workers N`) answers a scrape for all of them, each sample labelled `worker`: see
`replica.py`, which `exposition()` defers to then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.observability.replica import Registry, ReplicaMetrics

PREFIX = "llm_gateway"
# Seconds: from a few ms of gateway overhead to a long generation.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# OpenTelemetry's advice for time to first token.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
NONE = "none"
# Why an audit line could not be written (`audit_write_failures_total`'s label).
AUDIT_FAILURE_REASONS = ("no_space", "permission", "removed", "other")

Labelled = TypeVar("Labelled", Counter, Gauge, Histogram)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = Registry()
        self._children: dict[tuple[object, tuple[str, ...]], object] = {}
        # Set in a worker process of a replica of several (supervisor.py).
        self.replica: ReplicaMetrics | None = None
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by team, model, upstream and HTTP status code.",
            ["team", "model", "upstream", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end request duration (OTel gen_ai.server.request.duration).",
            ["team", "model"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Streams: time until the first event reached the client "
            "(OTel gen_ai.server.time_to_first_token).",
            ["team", "model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.upstream_attempt_duration = Histogram(
            f"{PREFIX}_upstream_attempt_duration_seconds",
            "One upstream attempt, until its answer (or first stream event) or its failure.",
            ["upstream", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens by team, model and kind: prompt (OTel input) or completion (OTel output).",
            ["team", "model", "kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight",
            "Requests being handled now.",
            registry=self.registry,
        )
        self.stream_endings = Counter(
            f"{PREFIX}_stream_endings",
            "Streams relayed to clients, by how they ended: ok, upstream_cut (the upstream "
            "dropped, stalled or reported an error mid-stream), upstream_bad_event, "
            "client_aborted, client_stalled, gateway_shutdown.",
            ["model", "outcome"],
            registry=self.registry,
        )
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

        # By reason only: the client address is what an alert wants, and it would make the
        # label unbounded (it is in the audit line instead).
        self.auth_failures = Counter(
            f"{PREFIX}_auth_failures",
            "Failed authentications, by reason: missing, malformed, unknown_key, "
            "expired_key (each counted toward its address's limit) or blocked (refused, "
            "its address blocked).",
            ["reason"],
            registry=self.registry,
        )
        self.auth_blocks = Counter(
            f"{PREFIX}_auth_blocks",
            "Client addresses blocked for too many failed authentications.",
            registry=self.registry,
        )
        self.auth_limiter_errors = Counter(
            f"{PREFIX}_auth_limiter_errors",
            "Failed authentications Redis could not count in time (counted in this process).",
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
        self.upstream_pool_waits = Histogram(
            f"{PREFIX}_upstream_pool_wait_seconds",
            "Waits for a connection of the gateway's own full pool to an upstream, by how "
            "they ended: acquired, timed_out (answered 503 upstream_busy) or abandoned (the "
            "client left or the call's deadline came first). Requests that found a free "
            "connection do not wait and are not observed.",
            ["upstream", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Requests waiting for model capacity (every upstream they may use at its "
            "max_in_flight), by model and team.",
            ["model", "team"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "How long requests that found the model's capacity full waited in line, "
            "however the wait ended. Requests that found a free slot are not observed.",
            ["model", "team"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_rejected = Counter(
            f"{PREFIX}_queue_rejected",
            "Requests answered 503 model_overloaded, by reason: queue_full (the team's "
            "queue for the model held max_depth) or max_wait (the wait ran out).",
            ["model", "team", "reason"],
            registry=self.registry,
        )
        self.ejections = Counter(
            f"{PREFIX}_upstream_ejections",
            "Upstreams ejected by passive health after consecutive failures.",
            ["upstream"],
            registry=self.registry,
        )

        self.config_generation = Gauge(
            f"{PREFIX}_config_generation",
            "The generation of the configuration in force: 1 at start-up, one more for "
            "each reload that put a new configuration in force.",
            registry=self.registry,
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Configuration reloads, by result: ok, unchanged, invalid (refused: the file has "
            "problems), restart_required (refused: it changes settings only a restart "
            "applies), failed (a bug while building).",
            ["result"],
            registry=self.registry,
        )
        # Every result from the start, at 0: an alert on `invalid` sees its first one.
        for result in ("ok", "unchanged", "invalid", "restart_required", "failed"):
            self.config_reloads.labels(result)

        self.audit_write_failures = Counter(
            f"{PREFIX}_audit_write_failures",
            "Audit lines that could not be written, by reason: no_space (disk or quota "
            "full, or the line cut short by it), permission (refused, read-only file "
            "system), other; and audit files found deleted under the gateway (removed: "
            "the lines they held are gone; the file is created again).",
            ["reason"],
            registry=self.registry,
        )
        # Every reason from the start, at 0: an alert on an increase sees the first one.
        for reason in AUDIT_FAILURE_REASONS:
            self.audit_write_failures.labels(reason)
        self.audit_available = Gauge(
            f"{PREFIX}_audit_available",
            "1 while the last audit line was written, 0 since one could not be (with "
            "audit.on_failure: refuse, API requests are answered 503 audit_unavailable).",
            registry=self.registry,
        )
        self.audit_available.set(1)

        self.safety_verdicts = Counter(
            f"{PREFIX}_safety_verdicts",
            "Safety model verdicts (safe, unsafe, unavailable), by safety model.",
            ["model", "verdict"],
            registry=self.registry,
        )

    def child(self, metric: Labelled, *values: str) -> Labelled:
        """`metric.labels(*values)`, looked up once: prometheus_client validates the values
        and takes a lock on every `labels()` call (1.5 us here, several per request), a
        dictionary lookup is a tenth of that. Label values are bounded (see above), and
        so is this cache."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]

    def exposition(self) -> bytes:
        if self.replica is not None:
            return self.replica.exposition()
        return generate_latest(self.registry)


class UpstreamHealthCollector(Collector):
    """`llm_gateway_upstream_healthy` read from the health book at scrape time: 1 in
    service, 0 ejected."""

    def __init__(self, states: Callable[[], dict[str, bool]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            f"{PREFIX}_upstream_healthy",
            "1 while the upstream is in service, 0 while passive health has ejected it.",
            labels=["upstream"],
        )
        for name, healthy in sorted(self._states().items()):
            gauge.add_metric([name], 1.0 if healthy else 0.0)
        yield gauge

    def describe(self) -> Iterator[Metric]:
        return iter(())


# Every status the gateway answers (499: the client left first). A status outside the set
# would be a bug; it is counted as "other" rather than growing the label's values.
STATUS_CODES = frozenset(
    str(code) for code in (200, 400, 401, 404, 405, 413, 415, 429, 499, 500, 503, 504)
)


def status_code(status: int) -> str:
    code = str(status)
    return code if code in STATUS_CODES else "other"
