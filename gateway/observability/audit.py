"""The audit trail: one record per request, whatever happened to it (refused, blocked,
failed, aborted or answered), for compliance reviews. It names who asked what of which
model and upstream, the outcome, the tokens, the policies and compliance regime applied
and the safety verdict; it never holds message content or keys."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.context import RequestContext


def write_audit(log: FilteringBoundLogger, request: web.Request, ctx: RequestContext) -> None:
    log.info(
        "audit",
        **ctx.summary(),
        method=request.method,
        attempts=ctx.attempts,
        policies=list(ctx.policies),
        compliance="hipaa" if ctx.hipaa else "none",
        safety_verdict=ctx.safety_verdict,
    )
