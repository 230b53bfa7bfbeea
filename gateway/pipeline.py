"""The request path as data: the `Stage` a step of it is, the `Exchange` (the per-request
object the stages fill in) and the `Pipeline` that runs an ordered list of stages.

Envoy's filter chain in small: a request enters each stage in order; a stage records its
result on the exchange or raises a `GatewayError`, which ends the way in. Then, however the
request ended (answered, refused, failed, or its client gone), every stage that was entered
leaves, in reverse order: the way out is where a stage gives back what it holds and where
the request is accounted, counted and audited. The lists themselves are built once, in
`app.py`; the handlers only run them.

Each field of the exchange has exactly one writer, the stage named beside it (or the
pipeline itself); later stages read what earlier ones decided and never rewrite it. A stage
that changes the request produces a new request value of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.accounting import Usage, actual_usage
from gateway.errors import GatewayError, InternalError
from gateway.observability.logs import where_it_failed
from gateway.routing import CallRecord, Route, Translation
from gateway.upstream.client import JsonAnswer, StreamAnswer

if TYPE_CHECKING:
    from gateway.auth_failures import AuthFailure
    from gateway.contract import ChatCompletionRequest
    from gateway.observability.tracing import RequestTrace
    from gateway.stages.context_length import Fitted
    from gateway.stages.policy import PolicyDecision
    from gateway.stages.ratelimit import Admission
    from gateway.teams import Team

# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499

T = TypeVar("T")


class StageOrderError(RuntimeError):
    """A stage read what no earlier stage wrote: a bug in the stage list, never the client's."""


def need(value: T | None, what: str) -> T:
    """An earlier stage's output, which this stage cannot work without."""
    if value is None:
        raise StageOrderError(f"{what} is not decided yet at this stage")
    return value


@dataclass(slots=True)
class RelayRecord:
    """What the relay saw of the answer on its way to the client."""

    # Milliseconds from the request's start to the first byte of a stream sent to the client.
    first_byte_ms: float | None = None
    # Content events relayed on a stream: the completion's size when no usage arrives.
    content_events: int = 0
    # The usage a stream reported in its last chunk.
    usage: Usage | None = None
    # How the answer's relay ended (the audit line's `outcome`):
    # - "ok": a whole answer, or a stream that reached [DONE];
    # - "upstream_cut": the upstream cut the stream, reported an error in it or went
    #   silent past its idle timeout (the client got an error event, no [DONE]);
    # - "upstream_bad_event": the upstream sent an event that is not a chat.completion.chunk
    #   (invalid UTF-8, not JSON, wrong shape) or is too large; not passed on, and the
    #   stream ended as for a cut;
    # - "client_aborted": the client left while the stream was being written;
    # - "client_stalled": the client took nothing for the upstream's idle timeout (or was
    #   still being waited on at its total), and the gateway closed its connection.
    end: str = "ok"


@dataclass(slots=True, eq=False)
class Exchange:
    """One request on its way through the stages; see the module docstring for the rule."""

    request_id: str  # the middleware
    http: web.Request  # the middleware
    started: float = field(default_factory=time.perf_counter)  # the middleware

    trace: RequestTrace | None = None  # trace (only when tracing is on)
    team: Team | None = None  # auth
    # auth: a refused authentication (why, the client address, the key's fingerprint).
    auth_failure: AuthFailure | None = None
    request: ChatCompletionRequest | None = None  # validate: the client's, normalized
    route: Route | None = None  # route: the model the team asked for and may use
    hipaa_decision: bool | None = None  # policy: is the request under HIPAA
    policy: PolicyDecision | None = None  # policy: caps, defaults, safety model, route view
    fitted: Fitted | None = None  # context_length: the request that fits, its token estimate
    translation: Translation | None = None  # translate: the bodies for each dialect
    admission: Admission | None = None  # rate_limit: what the request holds until it ends
    # safety: "not_checked", "safe", "unsafe", "unavailable", "empty" (nothing to
    # classify) or "native" (the upstream checks).
    safety_verdict: str = "not_checked"
    call: CallRecord = field(default_factory=CallRecord)  # upstream (via the caller)
    answer: JsonAnswer | StreamAnswer | None = None  # upstream
    answer_verdict: str | None = None  # answer_safety: the verdict on a whole answer
    relayed: RelayRecord = field(default_factory=RelayRecord)  # relay
    response: web.StreamResponse | None = None  # relay, or the last stage of a short list

    error: GatewayError | None = None  # the pipeline: why the way in ended early
    aborted: bool = False  # the pipeline: the client left while a stage was running

    # ---------------------------------------------------------------- derived, read-only

    @property
    def hipaa(self) -> bool:
        """Under HIPAA: the policy stage's decision; before it ran, the team's forced regime
        (so a request refused early is still handled and audited under it)."""
        if self.hipaa_decision is not None:
            return self.hipaa_decision
        return self.team is not None and self.team.forces_hipaa

    @property
    def model(self) -> str | None:
        return None if self.route is None else self.route.model

    @property
    def stream(self) -> bool:
        return self.request is not None and self.request.is_stream

    @property
    def usage(self) -> Usage | None:
        """What the request is charged: the upstream's reported usage, else an estimate from
        what was relayed; None when no upstream was asked."""
        if self.call.attempts == 0:
            return None
        reported = self.answer.usage if isinstance(self.answer, JsonAnswer) else None
        prompt = 0 if self.fitted is None else self.fitted.prompt_tokens
        return actual_usage(reported or self.relayed.usage, prompt, self.relayed.content_events)

    @property
    def status(self) -> int:
        if self.aborted:
            return CLIENT_CLOSED
        if self.error is not None:
            return self.error.status
        return 0 if self.response is None else self.response.status

    @property
    def outcome(self) -> str:
        # A client the relay cut for not reading leaves the handler as a lost client does
        # (`aborted`): the relay's word for it is the more precise.
        if self.aborted and self.relayed.end != "client_stalled":
            return "client_aborted"
        return self.relayed.end

    @property
    def error_code(self) -> str | None:
        """The `code` of the OpenAI error body the request was answered with: None for an
        answer that is not an error, and for a client that left before any answer."""
        if self.aborted or self.error is None:
            return None
        return self.error.code

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def response_headers(self) -> dict[str, str]:
        """Headers every answer of this request carries, from what the stages decided."""
        headers = {"x-request-id": self.request_id}
        if self.admission is not None:
            headers.update(self.admission.headers)
        if self.policy is not None and self.policy.clamped:
            headers["x-gateway-clamped-params"] = ",".join(self.policy.clamped)
        if self.fitted is not None and self.fitted.truncated:
            headers["x-gateway-truncated-messages"] = str(self.fitted.truncated)
        if self.translation is not None and self.translation.dropped:
            headers["x-gateway-dropped-params"] = ",".join(self.translation.dropped)
        return headers

    def reply(self) -> web.StreamResponse:
        """The response the stages produced, or the error that ended them."""
        if self.error is not None:
            return error_response(self.error.withheld() if self.hipaa else self.error)
        return need(self.response, "the response")

    def summary(self) -> dict[str, object]:
        """The fields the access line and the audit line share: never content, never keys."""
        usage = self.usage
        return {
            "request_id": self.request_id,
            "team": None if self.team is None else self.team.name,
            "model": self.model,
            "upstream": self.call.upstream,
            "status": self.status,
            "outcome": self.outcome,
            "latency_ms": round(self.elapsed_ms(), 3),
            "prompt_tokens": None if usage is None else usage.prompt_tokens,
            "completion_tokens": None if usage is None else usage.completion_tokens,
            # Waited in line for model capacity (0: found a free slot, or asked no upstream).
            "queue_wait_ms": self.call.queue_wait_ms,
        }


def error_response(error: GatewayError) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body_bytes(),
        content_type="application/json",
        headers=error.headers,
    )


class Stage:
    """One step of the request path. `enter` records the stage's result on the exchange or
    raises a GatewayError; `leave` runs on the way out for every stage that was entered,
    however the request ended, and must not raise."""

    name: str

    async def enter(self, exchange: Exchange) -> None:
        return None

    def leave(self, exchange: Exchange) -> None:
        return None


class Pipeline:
    def __init__(self, stages: Sequence[Stage], log: FilteringBoundLogger) -> None:
        self.stages = tuple(stages)
        self._log = log

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    async def run(self, exchange: Exchange) -> None:
        entered = 0
        try:
            for stage in self.stages:
                entered += 1
                await stage.enter(exchange)
        except GatewayError as error:
            # Kept without its traceback, whose frames refer to the exchange: a cycle that
            # would keep the whole request alive until the garbage collector ran.
            error.__traceback__ = error.__context__ = None
            exchange.error = error
        except (asyncio.CancelledError, ConnectionResetError):
            exchange.aborted = True
            raise
        except Exception as exc:
            self._log.error(
                "internal_error", request_id=exchange.request_id, where=where_it_failed(exc)
            )
            exchange.error = InternalError("The gateway failed on its own; this is a bug.")
        finally:
            for stage in reversed(self.stages[:entered]):
                try:
                    stage.leave(exchange)
                except Exception as exc:  # one stage's bug must not skip the others' release
                    self._log.error(
                        "stage_leave_failed",
                        request_id=exchange.request_id,
                        stage=stage.name,
                        where=where_it_failed(exc),
                    )
