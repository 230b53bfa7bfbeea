"""What the stages and the upstream layer share, below both: a model's route (its upstreams
and what they can honour), the request translated for each of them, the record of the
attempts one call made, and what a traced call tells its trace. `stages/` decides these;
`upstream/` only reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.config import ModelConfig, UpstreamConfig
from gateway.dialects import UpstreamDialect


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One upstream that serves a model, and the model's name there."""

    upstream_name: str
    upstream: UpstreamConfig
    upstream_model: str
    dialect: UpstreamDialect
    weight: float


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the public name, whatever alias the client used
    config: ModelConfig
    targets: tuple[UpstreamTarget, ...]
    # Parameters some upstream of the model cannot honour: refused (or dropped) whichever
    # upstream serves the request, so the answer does not depend on the pick.
    unsupported: frozenset[str]
    droppable: frozenset[str]
    dialects: str  # for messages: "openai", or "openai/vllm" for a mixed model
    # Gateway-enforced parameters every upstream of the route also takes natively
    # (Together's safety_model and compliance): forwarded besides being enforced.
    native: frozenset[str]
    # The route restricted to HIPAA-eligible upstreams; None when the model has none.
    hipaa: Route | None = None


@dataclass(frozen=True, slots=True)
class Translation:
    """The request's body in each dialect its route's upstreams speak, built once before
    the first attempt, so retries reuse them."""

    bodies: dict[tuple[str, str], bytes]  # by (dialect, upstream model name)
    dropped: tuple[str, ...]  # parameters dropped by the model's drop_params

    def body_for(self, target: UpstreamTarget) -> bytes:
        return self.bodies[target.dialect.name, target.upstream_model]


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who a call claims upstream capacity for, and how it may wait for it (see
    `upstream.capacity`): the team, its share, its class, its queue's bounds."""

    team: str
    share: float = 1.0
    low_priority: bool = False
    max_wait_s: float = 5.0
    max_depth: int = 100


@dataclass(slots=True)
class CallRecord:
    """Where one upstream call went: written by the upstream caller attempt by attempt, so
    a call that fails still names its last upstream."""

    upstream: str | None = None
    attempts: int = 0
    # Milliseconds the call waited in line for upstream capacity (all attempts).
    queue_wait_ms: float = 0.0


SpanValue = str | int | float | bool


class SpanEnd(Protocol):
    """An open span of a traced call: `end` closes it with what was learnt meanwhile."""

    def end(self, **attributes: SpanValue) -> None: ...


class AttemptSpan(SpanEnd, Protocol):
    # The trace context header lines to send with the attempt (`traceparent`, and the
    # client's `tracestate`), naming the attempt's span as the upstream's parent.
    headers: bytes


class CallTrace(Protocol):
    """What the upstream caller tells the trace of a call as it goes (given only when
    tracing is on: untraced calls pay nothing)."""

    def queue_wait(self) -> SpanEnd: ...

    def attempt(self, target: UpstreamTarget, number: int) -> AttemptSpan: ...
