"""Trace stages, in the paths only when tracing is configured (see
`observability.tracing`): `Trace` opens the request's server span on the way in and, on
the way out, names it and gives it what the request came to, by the GenAI semantic
conventions; `Traced` wraps a stage that waits (the rate limit, the safety checks) in a
child span of its own.

Reads: everything the other stages decided (on the way out). Writes: `trace`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.errors import GatewayError
from gateway.pipeline import Exchange, Stage
from gateway.routing import SpanValue

if TYPE_CHECKING:
    from gateway.observability.tracing import Tracing


class Trace(Stage):
    name = "trace"

    def __init__(self, tracing: Tracing, route: str, operation: str | None) -> None:
        self._tracing = tracing
        self._route = route
        # The GenAI operation the path performs ("chat"), None for the other API paths.
        self._operation = operation

    async def enter(self, exchange: Exchange) -> None:
        http = exchange.http
        # None when the SDK failed: the request goes on untraced.
        exchange.trace = self._tracing.request(http.headers, http.method, self._route)

    def leave(self, exchange: Exchange) -> None:
        trace = exchange.trace
        if trace is None:
            return
        status = exchange.status
        attributes: dict[str, SpanValue] = {
            "http.response.status_code": status,
            "llm_gateway.request_id": exchange.request_id,
            "llm_gateway.outcome": exchange.outcome,
        }
        name = f"{exchange.http.method} {self._route}"
        if exchange.team is not None:
            attributes["llm_gateway.team"] = exchange.team.name
        if exchange.error is not None and exchange.error.code is not None:
            attributes["error.type"] = exchange.error.code
        if self._operation is not None:
            attributes["gen_ai.operation.name"] = self._operation
            model = exchange.model  # the public name, resolved: never the client's text
            if model is not None:
                name = f"{self._operation} {model}"
                attributes["gen_ai.request.model"] = model
                if status == 200:
                    attributes["gen_ai.response.model"] = model
            usage = exchange.usage
            if usage is not None:
                attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            call = exchange.call
            if call.upstream is not None:
                attributes["llm_gateway.upstream"] = call.upstream
                attributes["llm_gateway.attempts"] = call.attempts
            if call.queue_wait_ms:
                attributes["llm_gateway.queue_wait_ms"] = call.queue_wait_ms
            attributes["llm_gateway.stream"] = exchange.stream
        trace.end(name, attributes, failed=status >= 500)


class Traced(Stage):
    """`stage`, in a child span named `span_name` while it is entered; `attributes` adds
    what the stage decided (read from the exchange once it is done). With `applies`, only
    the requests it says the stage works for get the span (a span costs some 60 us of CPU
    made and exported: none for a safety check no policy asks for)."""

    def __init__(
        self,
        stage: Stage,
        span_name: str,
        attributes: Callable[[Exchange], dict[str, SpanValue]] | None = None,
        applies: Callable[[Exchange], bool] | None = None,
    ) -> None:
        self.name = stage.name
        self._stage = stage
        self._span_name = span_name
        self._attributes = attributes
        self._applies = applies

    async def enter(self, exchange: Exchange) -> None:
        trace = exchange.trace
        if trace is None or (self._applies is not None and not self._applies(exchange)):
            await self._stage.enter(exchange)
            return
        span = trace.child(self._span_name)
        ended: dict[str, SpanValue] = {}
        try:
            await self._stage.enter(exchange)
        except GatewayError as error:
            ended["http.response.status_code"] = error.status
            if error.code is not None:
                ended["error.type"] = error.code
            raise
        finally:
            if self._attributes is not None:
                ended.update(self._attributes(exchange))
            span.end(**ended)

    def leave(self, exchange: Exchange) -> None:
        self._stage.leave(exchange)
