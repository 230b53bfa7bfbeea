"""Request metrics, counted on the way out: requests by team, model, upstream and exact
status code, durations, time to first token and tokens; requests in flight while inside.

Every label value is a configured name (set by a stage from the config), `none`, or a code
from the bounded set the gateway can answer: never client input.

Reads: `team`, `route`, `call`, the status, `relayed`, the usage. Writes: nothing on the
exchange.
"""

from __future__ import annotations

from gateway.observability.metrics import NONE, GatewayMetrics, status_code
from gateway.pipeline import Exchange, Stage


class Metrics(Stage):
    name = "metrics"

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    async def enter(self, exchange: Exchange) -> None:
        self._metrics.in_flight.inc()

    def leave(self, exchange: Exchange) -> None:
        metrics = self._metrics
        metrics.in_flight.dec()
        team = NONE if exchange.team is None else exchange.team.name
        model = exchange.model or NONE
        upstream = exchange.call.upstream or NONE
        child = metrics.child
        child(metrics.requests, team, model, upstream, status_code(exchange.status)).inc()
        child(metrics.request_duration, team, model).observe(exchange.elapsed_ms() / 1000)
        first_byte = exchange.relayed.first_byte_ms
        if first_byte is not None:  # a stream reached its client
            child(metrics.time_to_first_token, team, model).observe(first_byte / 1000)
            child(metrics.stream_endings, model, exchange.outcome).inc()
        usage = exchange.usage
        if usage is not None:
            child(metrics.tokens, team, model, "prompt").inc(usage.prompt_tokens)
            child(metrics.tokens, team, model, "completion").inc(usage.completion_tokens)
