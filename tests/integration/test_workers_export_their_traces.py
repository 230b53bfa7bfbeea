"""`serve --workers 2` with tracing: each worker exports its own requests' spans (its
exporter is made after the fork), naming itself in the resource, and sends what it still
holds when it stops: with an export delay far longer than the test, every span arrives
only through the flush of a SIGTERM's drain."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from tests.conftest import RedisProcess, RunningUpstream, auth, config_dict
from tests.gateway_process import start_gateway_process
from tests.integration.otlp import otlp_receiver
from tests.integration.workers import WORKERS, chat, fresh_connections

MOST = 64  # new connections until both workers answered (see test_workers_answer...)


async def test_each_worker_exports_its_spans_and_flushes_them_when_stopped(
    upstream: RunningUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    async with otlp_receiver() as receiver:
        raw = config_dict(upstream.url, shutdown_timeout=10)
        raw["rate_limits"] = {"redis_url": redis_server.url, "redis_timeout_ms": 5000}
        raw["tracing"] = {"endpoint": receiver.endpoint, "export_delay_ms": 60_000}
        gateway = start_gateway_process(tmp_path, raw=raw, workers=WORKERS)
        traces: dict[str, str] = {}  # trace id -> the worker that answered
        try:
            async with fresh_connections() as session:
                for i in range(MOST):
                    trace_id = secrets.token_hex(16)
                    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
                    answer = await chat(
                        session, gateway, f"traced-{i}", {**auth(), "traceparent": traceparent}
                    )
                    assert answer.status == 200
                    traces[trace_id] = answer.worker
                    if len(set(traces.values())) == WORKERS and i >= 3:
                        break
            assert receiver.spans == []  # nothing sent yet: the batch waits a minute
        finally:
            # In a thread: the receiver, on this loop, must answer the workers' last exports.
            exit_code = await asyncio.to_thread(gateway.stop)

    assert exit_code == 0
    assert set(traces.values()) == {"1", "2"}
    for trace_id, worker in traces.items():
        server = receiver.server_span(trace_id)
        assert server.resource["llm_gateway.worker"] == worker
        assert server.attributes["http.response.status_code"] == 200
