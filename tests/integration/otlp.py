"""An OTLP/HTTP trace receiver of the tests' own, on loopback: what a collector would get
from the gateway, decoded with `opentelemetry-proto` (the protocol's own message types),
and the raw bodies as they came (to look for what must never be in them)."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

Value = str | int | float | bool


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL
    attributes: dict[str, Value]
    status: str  # STATUS_CODE_UNSET, STATUS_CODE_ERROR
    events: int
    resource: dict[str, Value]
    start_ns: int
    end_ns: int


@dataclass
class OtlpReceiver:
    server: TestServer | None = None
    bodies: list[bytes] = field(default_factory=list)  # as sent, decompressed
    headers: list[dict[str, str]] = field(default_factory=list)
    spans: list[ReceivedSpan] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["Content-Type"] == "application/x-protobuf"
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.SpanKind.Name(span.kind),
                            attributes=_attributes(span.attributes),
                            status=span.status.StatusCode.Name(span.status.code),
                            events=len(span.events),
                            resource=resource,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def server_span(self, trace_id: str) -> ReceivedSpan:
        (span,) = [s for s in self.trace(trace_id) if s.kind == "SPAN_KIND_SERVER"]
        return span

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        """`parent`'s child spans, in the order they started."""
        found = [s for s in self.trace(parent.trace_id) if s.parent_span_id == parent.span_id]
        return sorted(found, key=lambda span: span.start_ns)

    async def wait_for_server_span(self, trace_id: str, seconds: float = 10.0) -> ReceivedSpan:
        """The server span of `trace_id` once exported (the gateway batches its spans)."""
        started = time.monotonic()
        while not any(s.kind == "SPAN_KIND_SERVER" for s in self.trace(trace_id)):
            assert time.monotonic() - started < seconds, f"no server span of {trace_id}"
            await asyncio.sleep(0.02)
        return self.server_span(trace_id)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Value]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Value:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    raise AssertionError(f"an attribute of an unexpected type: {kind}")


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.server = TestServer(receiver.app())
    await receiver.server.start_server()
    try:
        yield receiver
    finally:
        await receiver.server.close()
