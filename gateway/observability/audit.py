"""The audit trail: one record per request, whatever happened to it (refused, blocked,
failed, aborted or answered), for compliance reviews. It names who asked what of which
model and upstream, the outcome, the tokens, the policies and compliance regime applied
and the safety verdict; it never holds message content or keys."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.context import RequestContext


def write_audit(log: FilteringBoundLogger, request: web.Request, ctx: RequestContext) -> None:
    usage = ctx.usage
    log.info(
        "audit",
        request_id=ctx.request_id,
        team=ctx.team,
        model=ctx.model,
        upstream=ctx.upstream,
        attempts=ctx.attempts,
        method=request.method,
        status=ctx.status,
        outcome=ctx.outcome,
        latency_ms=round(ctx.elapsed_ms(), 3),
        prompt_tokens=None if usage is None else usage.prompt_tokens,
        completion_tokens=None if usage is None else usage.completion_tokens,
        policies=list(ctx.policies),
        compliance="hipaa" if ctx.hipaa else "none",
        safety_verdict=ctx.safety_verdict,
    )
