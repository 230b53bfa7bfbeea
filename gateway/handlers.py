"""HTTP handlers. The chat handler reads top to bottom like the request path:
auth → validate → route → policy → context length → translate → safety → rate limit →
upstream (pick, call, retry) → relay → account; the middleware in `app.py` answers errors
and writes the access and audit lines."""

from __future__ import annotations

import time

from aiohttp import web
from pydantic_core import to_json

from gateway.accounting import (
    actual_usage,
    ask_for_stream_usage,
    estimate_prompt_tokens,
    reserved_tokens,
)
from gateway.appkeys import (
    AUTHENTICATOR,
    CONFIG,
    HEALTH,
    LIMITER,
    METRICS,
    POLICIES,
    RATE_LIMITS,
    REQUEST_CONTEXT,
    ROUTER,
    SAFETY,
    UPSTREAMS,
)
from gateway.limiter.redis import RedisLimiter
from gateway.relay import relay_json, relay_stream
from gateway.routing import CallRecord
from gateway.stages.context_length import fit_context
from gateway.stages.safety import conversation_of
from gateway.stages.translate import translate
from gateway.stages.validate import read_chat_request
from gateway.upstream.client import JsonAnswer

_STARTED = int(time.time())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    server = app[CONFIG].server
    ctx = request[REQUEST_CONTEXT]

    team = app[AUTHENTICATOR].authenticate(request.headers.get("Authorization"))
    ctx.team = team.name
    policies = app[POLICIES]
    ctx.hipaa = policies.forces_hipaa(team.name)

    chat = await read_chat_request(request, server.max_body_bytes)
    ctx.stream = chat.is_stream

    route = app[ROUTER].resolve(team.name, chat.model)
    ctx.model = route.model

    ctx.policies = policies.policies_of(team.name)
    ctx.hipaa = policies.under_hipaa(team.name, chat)
    decision = policies.apply(team.name, route, chat)
    route = decision.route
    if decision.clamped:
        ctx.response_headers["x-gateway-clamped-params"] = ",".join(decision.clamped)
    truncated = fit_context(route, chat)
    if truncated:
        ctx.response_headers["x-gateway-truncated-messages"] = str(truncated)

    client_wants_usage = ask_for_stream_usage(chat)
    translation = translate(route, chat)
    if translation.dropped:
        ctx.response_headers["x-gateway-dropped-params"] = ",".join(translation.dropped)

    conversation = conversation_of(chat) if decision.safety_model else []
    if decision.safety_model:
        await app[SAFETY].check(decision.safety_model, decision.safety, conversation, ctx)
    elif chat.safety_model:
        ctx.safety_verdict = "native"

    prompt_tokens = estimate_prompt_tokens(chat)
    limits = app[RATE_LIMITS]
    reservation = reserved_tokens(chat, prompt_tokens, app[CONFIG].rate_limits.default_max_tokens)
    admission = await limits.admit(team.name, route.model, reservation)
    if admission is not None:
        ctx.response_headers.update(admission.headers)

    try:
        record = CallRecord()
        try:
            answer = await app[UPSTREAMS].call(
                route, translation, chat.is_stream, ctx.request_id, record
            )
        finally:
            ctx.upstream, ctx.attempts = record.upstream, record.attempts
        if isinstance(answer, JsonAnswer):
            ctx.usage = answer.usage
            if decision.safety_model and decision.safety and decision.safety.check_output:
                await app[SAFETY].check_answer(
                    decision.safety_model, decision.safety, conversation, answer.body, ctx
                )
            return relay_json(answer, ctx)
        try:
            return await relay_stream(request, answer, ctx, client_wants_usage)
        finally:
            answer.close()
    finally:
        ctx.usage = actual_usage(ctx.usage, prompt_tokens, ctx.content_events)
        if admission is not None:
            limits.settle(
                team.name, admission, ctx.usage.prompt_tokens + ctx.usage.completion_tokens
            )


async def list_models(request: web.Request) -> web.Response:
    app = request.app
    team = app[AUTHENTICATOR].authenticate(request.headers.get("Authorization"))
    request[REQUEST_CONTEXT].team = team.name
    models = [
        {
            "id": route.model,
            "object": "model",
            "created": _STARTED,
            "owned_by": route.config.owned_by,
        }
        for route in app[ROUTER].models_for(team.name)
    ]
    return web.Response(
        body=to_json({"object": "list", "data": models}), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    ready = UPSTREAMS in app and app[UPSTREAMS].ready
    limiter = app[LIMITER]
    # A Redis outage degrades the limiter (to its failure mode) but not readiness: the
    # gateway still answers, and restarting it would not bring Redis back.
    rate_limiter = (
        ("redis" if limiter.available else "redis-unavailable")
        if isinstance(limiter, RedisLimiter)
        else "memory"
    )
    return web.json_response(
        {
            "status": "ready" if ready else "starting",
            "config_loaded": CONFIG in app,
            "rate_limiter": rate_limiter,
            "upstreams": app[HEALTH].snapshot(),
        },
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    return web.Response(body=registry.exposition(), headers={"Content-Type": registry.content_type})
