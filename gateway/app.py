"""Application assembly: `build_app(config)` wires the stages, the shared upstream session
and the routes; `request_middleware` gives every request its id and context, answers every
error in the OpenAI shape and writes one access line per request."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import TextIO

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import handlers
from gateway.appkeys import (
    AUDIT,
    AUTHENTICATOR,
    CONFIG,
    HEALTH,
    LIMITER,
    LOG,
    METRICS,
    POLICIES,
    RATE_LIMITS,
    REQUEST_CONTEXT,
    ROUTER,
    SAFETY,
    TASKS,
    UPSTREAMS,
)
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from gateway.limiter.base import LimiterBackend
from gateway.limiter.memory import MemoryLimiter
from gateway.limiter.redis import RedisLimiter
from gateway.observability.audit import write_audit
from gateway.observability.logs import make_audit_logger, make_logger, where_it_failed
from gateway.observability.metrics import (
    NONE,
    GatewayMetrics,
    UpstreamHealthCollector,
    status_class,
)
from gateway.stages.auth import Authenticator
from gateway.stages.policy import PolicyStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.route import Router
from gateway.stages.safety import SafetyStage
from gateway.tasks import BackgroundTasks
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.client import UpstreamClient
from gateway.upstream.health import HealthBook

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


def build_app(
    config: GatewayConfig,
    *,
    log_stream: TextIO | None = None,
    limiter: LimiterBackend | None = None,
) -> web.Application:
    """The gateway application; `limiter` replaces the backend the config names (tests
    pass one with a fake clock)."""
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
        handler_args={"max_field_size": 16 * 1024},
    )
    app[CONFIG] = config
    app[AUTHENTICATOR] = Authenticator(config)
    app[ROUTER] = Router(config)
    app[LOG] = make_logger(config.server, log_stream)
    app[AUDIT] = make_audit_logger(config.server, log_stream)
    app[POLICIES] = PolicyStage(config)
    app[METRICS] = GatewayMetrics()
    app[TASKS] = BackgroundTasks(app[LOG])
    app[LIMITER] = limiter or _limiter_backend(config)
    app[RATE_LIMITS] = RateLimitStage(config, app[LIMITER], app[TASKS], app[LOG], app[METRICS])
    app[HEALTH] = HealthBook(
        config.health,
        {name: [t.upstream for t in model.upstreams] for name, model in config.models.items()},
    )
    app[METRICS].registry.register(UpstreamHealthCollector(app[HEALTH].in_service))
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_background_work)
    app.on_response_prepare.append(_add_request_id)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app


def _limiter_backend(config: GatewayConfig) -> LimiterBackend:
    url = config.rate_limits.redis_url
    return RedisLimiter(config.rate_limits, url) if url else MemoryLimiter()


async def _background_work(app: web.Application) -> AsyncIterator[None]:
    await app[LIMITER].warm_up()
    yield
    # Settle what in-flight requests left behind before the limiter goes away.
    await app[TASKS].drain(seconds=5.0)
    await app[LIMITER].close()


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(
        limit=sum(u.max_connections for u in config.upstreams.values()),
        limit_per_host=max(u.max_connections for u in config.upstreams.values()),
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        # The gateway sends exactly the headers each call builds: no cookies, no defaults.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
        auto_decompress=True,
    )
    app[UPSTREAMS] = UpstreamCaller(
        UpstreamClient(config, session), app[HEALTH], config.retries, app[METRICS]
    )
    app[SAFETY] = SafetyStage(app[ROUTER], app[UPSTREAMS], app[METRICS])
    yield
    await session.close()


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    ctx = request.get(REQUEST_CONTEXT)
    if ctx is not None:
        response.headers["x-request-id"] = ctx.request_id
        if ctx.response_headers:
            response.headers.update(ctx.response_headers)


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given is not None and _CLIENT_REQUEST_ID.match(given):
        return given
    return secrets.token_hex(16)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = RequestContext(request_id=_request_id(request))
    request[REQUEST_CONTEXT] = ctx
    metrics = request.app[METRICS]
    api = request.path.startswith("/v1/")
    if api:
        metrics.in_flight.inc()
    try:
        response = await handler(request)
        ctx.status = response.status
        return response
    except GatewayError as error:
        return _error_response(ctx, error)
    except web.HTTPException as http_error:
        return _error_response(ctx, _from_http_exception(http_error))
    except asyncio.CancelledError:
        ctx.status, ctx.outcome = CLIENT_CLOSED, "client_aborted"
        raise
    except ConnectionResetError:
        ctx.status, ctx.outcome = CLIENT_CLOSED, "client_aborted"
        raise
    except Exception as exc:
        request.app[LOG].error(
            "internal_error", request_id=ctx.request_id, where=where_it_failed(exc)
        )
        return _error_response(ctx, InternalError("The gateway failed on its own; this is a bug."))
    finally:
        _access_line(request, ctx, api)
        if api:
            # Probes and scrapes (/healthz, /readyz, /metrics) are not requests to audit.
            write_audit(request.app[AUDIT], request, ctx)
            metrics.in_flight.dec()
            if request.match_info.route.resource is not None:
                _count(metrics, ctx)


def _error_response(ctx: RequestContext, error: GatewayError) -> web.Response:
    if ctx.hipaa:
        error = error.withheld()
    ctx.status = error.status
    return web.Response(
        status=error.status,
        body=error.body_bytes(),
        content_type="application/json",
        headers=error.headers,
    )


def _from_http_exception(http_error: web.HTTPException) -> GatewayError:
    """aiohttp's own refusals (unknown route, wrong method, body too large) in our shape."""
    if isinstance(http_error, web.HTTPNotFound):
        return NotFound("No such endpoint.")
    if isinstance(http_error, web.HTTPMethodNotAllowed):
        return MethodNotAllowed("This endpoint does not accept that HTTP method.")
    if isinstance(http_error, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is larger than the gateway accepts.")
    if 400 <= http_error.status < 500:
        return InvalidRequest(f"The request was refused (HTTP {http_error.status}).")
    return InternalError("The gateway failed on its own; this is a bug.")


def _count(metrics: GatewayMetrics, ctx: RequestContext) -> None:
    # Every label value is a configured name (set by a stage from the config) or NONE.
    team, model = ctx.team or NONE, ctx.model or NONE
    metrics.requests.labels(team, model, ctx.upstream or NONE, status_class(ctx.status)).inc()
    metrics.request_duration.labels(team, model).observe(ctx.elapsed_ms() / 1000)
    if ctx.stream and ctx.first_byte is not None:
        metrics.time_to_first_token.labels(team, model).observe(ctx.first_byte / 1000)
    if ctx.usage is not None:
        metrics.tokens.labels(team, model, "prompt").inc(ctx.usage.prompt_tokens)
        metrics.tokens.labels(team, model, "completion").inc(ctx.usage.completion_tokens)


def _access_line(request: web.Request, ctx: RequestContext, api: bool) -> None:
    log = request.app[LOG]
    (log.info if api else log.debug)(
        "request",
        **ctx.summary(),
        method=request.method,
        path=request.path if request.match_info.route.resource is not None else "(unknown)",
        stream=ctx.stream,
        first_byte_ms=None if ctx.first_byte is None else round(ctx.first_byte, 3),
    )
