"""OpenTelemetry traces of API requests: the process's tracer (the SDK's provider, sampler
and batch exporter over OTLP/HTTP, set up by `tracing:` in the configuration) and the
trace of one request (`RequestTrace`: its server span and the child spans the stages and
the upstream caller open in it).

Only made when tracing is configured: without it the request path has no trace stage, no
wrapped stage and passes no trace to the caller, so it does no tracing work at all.

A tracing failure never fails a request: whatever the SDK raises while a span is made or
ended leaves that span unrecorded (the request's, or one child's), nothing else.

What a span may hold is chosen here, attribute by attribute: names, counts, statuses and
error codes, never message content, never keys; exceptions are never recorded (their
messages may quote an upstream's answer). Spans are built from explicit parents, not from
the SDK's context variables: one request's spans never depend on what else the task ran.

The export runs in the SDK's own thread (a batch at most `export_delay_ms` after its spans
ended, into a queue of at most `max_queue` spans: beyond, spans are dropped rather than
held), so a slow or absent collector costs the request path nothing but the queueing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TracingConfig
from gateway.routing import SpanValue, UpstreamTarget

SERVICE_NAME = "llm-gateway"
# The SDK's own batch size, or the queue's when smaller (the SDK refuses a larger batch).
_BATCH = 512


class Tracing:
    """The process's tracer. Made once per process (each worker has its own, made after
    the fork: the exporter's thread would not survive one); `close` sends what is left."""

    def __init__(self, config: TracingConfig, endpoint: str, worker: str | None) -> None:
        # The SDK warns through the standard logging, unconfigured here (its last-resort
        # handler writes to stderr): once per span dropped from a full queue, once per
        # malformed traceparent a client sends (quoting it). On the request path, with
        # the client's text: only its errors (a failed export) are let through.
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)
        self._close_within_s = config.export_timeout_s
        resource = {"service.name": SERVICE_NAME}
        if worker is not None:
            resource["llm_gateway.worker"] = worker
        ratio = TraceIdRatioBased(config.sample_ratio)
        self._provider = TracerProvider(
            sampler=ParentBased(ratio)
            if config.follow_client_sampling
            else ParentBased(ratio, remote_parent_sampled=ratio),
            resource=Resource.create(resource),
            shutdown_on_exit=False,  # closed with the application, whose end flushes it
        )
        exporter = OTLPSpanExporter(
            endpoint=f"{endpoint.rstrip('/')}/v1/traces",
            headers=config.export_headers(),
            timeout=config.export_timeout_s,
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=config.max_queue,
                max_export_batch_size=min(_BATCH, config.max_queue),
                schedule_delay_millis=config.export_delay_ms,
                export_timeout_millis=config.export_timeout_s * 1000,
            )
        )
        self._tracer = self._provider.get_tracer("llm_gateway")
        self._propagator = TraceContextTextMapPropagator()

    def request(self, headers: Mapping[str, str], method: str, route: str) -> RequestTrace | None:
        """The trace of one request: its server span, continuing the client's trace when
        it sent a valid W3C `traceparent` (and its `tracestate`); None if the SDK failed."""
        try:
            parent = self._propagator.extract(headers)
            span = self._tracer.start_span(
                f"{method} {route}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "http.route": route},
                record_exception=False,
                set_status_on_exception=False,
            )
            return RequestTrace(self._tracer, span)
        except Exception:  # see the module docstring
            return None

    def close(self) -> None:
        """Sends the spans still queued and stops the exporter's thread, waiting at most
        the export timeout (the SDK's own shutdown would wait 30 s for a collector that
        does not answer, past a supervisor's patience). Blocking: run it off the loop."""
        closing = threading.Thread(
            target=self._provider.shutdown, name="tracing-close", daemon=True
        )
        closing.start()
        closing.join(self._close_within_s)


class RequestTrace:
    """One request's spans: the server span, and its children as the request path opens
    them (a stage that waits, the wait in line for capacity, each upstream attempt)."""

    __slots__ = ("_context", "_tracer", "span")

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self.span = span
        self._context = trace.set_span_in_context(span)

    def child(self, name: str) -> ChildSpan:
        try:
            span = self._tracer.start_span(
                name, context=self._context, record_exception=False, set_status_on_exception=False
            )
        except Exception:  # see the module docstring
            return ChildSpan(trace.INVALID_SPAN)
        return ChildSpan(span)

    def queue_wait(self) -> ChildSpan:
        return self.child("queue_wait")

    def attempt(self, target: UpstreamTarget, number: int) -> AttemptSpan:
        """An upstream attempt's client span, named as the GenAI conventions name a model
        call (`chat {model}`, the model as the upstream knows it)."""
        url = target.upstream.base_url
        attributes: dict[str, SpanValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": target.upstream_model,
            "gen_ai.provider.name": target.dialect.name,
            "llm_gateway.upstream": target.upstream_name,
            "llm_gateway.attempt": number,
            "server.address": url.host or "",
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        try:
            span = self._tracer.start_span(
                f"chat {target.upstream_model}",
                context=self._context,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
        except Exception:  # see the module docstring
            return AttemptSpan(trace.INVALID_SPAN)
        return AttemptSpan(span)

    def end(self, name: str, attributes: dict[str, SpanValue], failed: bool) -> None:
        span = self.span
        try:
            span.update_name(name)
            span.set_attributes(attributes)
            if failed:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        except Exception:  # see the module docstring
            return


class ChildSpan:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def end(self, **attributes: SpanValue) -> None:
        try:
            if attributes:
                self._span.set_attributes(attributes)
            self._span.end()
        except Exception:  # see the module docstring
            return


class AttemptSpan(ChildSpan):
    """An attempt's span, and the trace context the upstream is sent: the attempt's span
    as its parent, the sampling decision, and the client's `tracestate` passed on."""

    __slots__ = ("headers",)

    def __init__(self, span: trace.Span) -> None:
        super().__init__(span)
        context = span.get_span_context()
        if not context.is_valid:  # the SDK failed to make it: nothing to continue
            self.headers = b""
            return
        lines = b"traceparent: 00-%032x-%016x-%02x\r\n" % (
            context.trace_id,
            context.span_id,
            context.trace_flags,
        )
        state = _bounded_state(context.trace_state.to_header())
        if state:
            lines += b"tracestate: %s\r\n" % state.encode("ascii", "replace")
        self.headers = lines

    def end(self, **attributes: SpanValue) -> None:
        if attributes.get("llm_gateway.attempt.outcome") == "failed":
            self._span.set_status(Status(StatusCode.ERROR))
        super().end(**attributes)


def _bounded_state(state: str) -> str:
    """The client's `tracestate`, its whole leading members within 512 characters (W3C
    allows dropping members; an 8 KB header line would be refused by many front ends), and
    never a line break (the SDK admits printable ASCII only: this keeps it so)."""
    if "\r" in state or "\n" in state:
        return ""
    while len(state) > _MAX_STATE:
        state = state.rpartition(",")[0]
    return state


_MAX_STATE = 512
