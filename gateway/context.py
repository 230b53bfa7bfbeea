"""The per-request record every stage writes to and the access line reads from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.accounting import Usage


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    team: str | None = None
    model: str | None = None
    upstream: str | None = None
    attempts: int = 0
    stream: bool = False
    status: int = 0
    # How the request ended when it did not end with a plain response: "client_aborted",
    # "upstream_cut" (a stream that stopped without [DONE]).
    outcome: str = "ok"
    usage: Usage | None = None
    first_byte: float | None = None
    # Content events relayed on a stream: the completion's size when no usage arrives.
    content_events: int = 0
    # Added to whatever response the request gets (the x-ratelimit-* headers).
    response_headers: dict[str, str] = field(default_factory=dict)
    # What the policy stage decided, for the audit line.
    policies: tuple[str, ...] = ()
    hipaa: bool = False
    # "not_checked", "safe", "unsafe", "unavailable", or "native" (the upstream checks).
    safety_verdict: str = "not_checked"

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def summary(self) -> dict[str, object]:
        """The fields the access line and the audit line share: never content, never keys."""
        usage = self.usage
        return {
            "request_id": self.request_id,
            "team": self.team,
            "model": self.model,
            "upstream": self.upstream,
            "status": self.status,
            "outcome": self.outcome,
            "latency_ms": round(self.elapsed_ms(), 3),
            "prompt_tokens": None if usage is None else usage.prompt_tokens,
            "completion_tokens": None if usage is None else usage.completion_tokens,
        }
