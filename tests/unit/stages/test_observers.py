"""The audit and metrics stages on their own: on the way out they record how the request
ended, whatever stage it ended in: one audit line and one count per request."""

from __future__ import annotations

import io
import json

from prometheus_client import generate_latest

from gateway.config import AuditConfig, ServerConfig
from gateway.errors import RateLimited
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from gateway.stages.audit import Audit
from gateway.stages.metrics import Metrics
from gateway.teams import teams_of
from tests.conftest import an_exchange, unit_config


async def test_a_refused_request_is_audited_and_counted_with_what_was_known() -> None:
    stream = io.StringIO()
    metrics = GatewayMetrics()
    audit = Audit(AuditTrail(AuditConfig(), metrics, make_logger(ServerConfig()), stream))
    counting = Metrics(metrics)
    exchange = an_exchange(team=teams_of(unit_config())["team-a"])

    await audit.enter(exchange)
    await counting.enter(exchange)
    in_flight = metrics.registry.get_sample_value("llm_gateway_requests_in_flight")
    exchange.error = RateLimited("slow down")
    counting.leave(exchange)
    audit.leave(exchange)

    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["event"], record["team"], record["status"]) == ("audit", "team-a", 429)
    assert (record["compliance"], record["safety_verdict"]) == ("none", "not_checked")
    exposition = generate_latest(metrics.registry).decode()
    assert (
        'llm_gateway_requests_total{code="429",model="none",team="team-a",upstream="none"} 1.0'
        in exposition
    )
    assert in_flight == 1
    assert metrics.registry.get_sample_value("llm_gateway_requests_in_flight") == 0
