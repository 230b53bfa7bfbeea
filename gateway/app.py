"""Application assembly: `build_app(config)` wires the shared parts (upstream session,
limiter, health, metrics), builds the request paths as ordered lists of stages, once, and
adds the routes; `request_middleware` gives every request its id and exchange, refuses
compressed bodies from their headers, answers aiohttp's own refusals in the OpenAI shape
and writes one access line per request. The connections themselves (timeouts, cap,
malformed HTTP) are `connections.py`'s."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import AsyncIterator
from typing import TextIO

import aiohttp
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from structlog.typing import FilteringBoundLogger

from gateway import handlers
from gateway.appkeys import (
    CHAT,
    CONFIG,
    EXCHANGE,
    HEALTH,
    LIMITER,
    LIVE_STREAMS,
    LOG,
    METRICS,
    MODEL_INFO,
    MODEL_LIST,
    TASKS,
    UPSTREAMS,
)
from gateway.auth_failures import AuthFailureLimit
from gateway.config import GatewayConfig
from gateway.connections import MAX_HEADER_LINE, MAX_REQUEST_LINE, SERVER_NAME
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedContentEncoding,
)
from gateway.limiter.base import LimiterBackend
from gateway.limiter.memory import MemoryLimiter
from gateway.limiter.redis import RedisLimiter
from gateway.observability.logs import make_audit_logger, make_logger, where_it_failed
from gateway.observability.metrics import GatewayMetrics, UpstreamHealthCollector
from gateway.openapi import handler as openapi_handler
from gateway.pipeline import Exchange, Pipeline, Stage, error_response
from gateway.stages.audit import Audit
from gateway.stages.auth import Authenticator
from gateway.stages.context_length import ContextLength
from gateway.stages.metrics import Metrics
from gateway.stages.models import ModelInfo, ModelList
from gateway.stages.policy import PolicyStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.relay import LiveStreams, Relay
from gateway.stages.route import Router
from gateway.stages.safety import AnswerCheck, SafetyCheck, SafetyModel
from gateway.stages.translate import Translator
from gateway.stages.upstream import CallUpstream
from gateway.stages.validate import Validator
from gateway.tasks import BackgroundTasks
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.client import UpstreamClient
from gateway.upstream.health import HealthBook

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_AUDIT_LOG = web.AppKey("audit_log", FilteringBoundLogger)
_AUTH_FAILURES = web.AppKey("auth_failures", AuthFailureLimit)
# Names the worker process that answered, when several serve the port (supervisor.py).
WORKER_HEADER = "x-gateway-worker"


def build_app(
    config: GatewayConfig,
    *,
    log_stream: TextIO | None = None,
    limiter: LimiterBackend | None = None,
    worker: str | None = None,
) -> web.Application:
    """The gateway application; `limiter` replaces the backend the config names (tests
    pass one with a fake clock); `worker` is the id of the worker process it runs in, when
    there are several (its log lines and answers say it)."""
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
        handler_args={
            "max_line_size": MAX_REQUEST_LINE,
            "max_field_size": MAX_HEADER_LINE,
            # aiohttp would inflate a compressed body as it arrives, even one nobody reads
            # (it drains unread bodies before the next request): a 1 MiB gzip body is ~1 GiB
            # of work. Bodies stay as sent; encoded ones are refused (request_middleware).
            "auto_decompress": False,
        },
    )
    app.on_response_prepare.append(_server_header)
    app[CONFIG] = config
    app[LOG] = make_logger(config.server, log_stream)
    if worker is not None:
        app[LOG] = app[LOG].bind(worker=worker)
        app.on_response_prepare.append(functools.partial(_worker_header, worker))
    app[_AUDIT_LOG] = make_audit_logger(config.server, log_stream)
    app[METRICS] = GatewayMetrics()
    app[TASKS] = BackgroundTasks(app[LOG])
    app[LIVE_STREAMS] = LiveStreams()
    app[LIMITER] = limiter or _limiter_backend(config)
    app[HEALTH] = HealthBook(
        config.health,
        {name: [t.upstream for t in model.upstreams] for name, model in config.models.items()},
    )
    app[METRICS].registry.register(UpstreamHealthCollector(app[HEALTH].in_service))
    app[_AUTH_FAILURES] = AuthFailureLimit(config, app[METRICS], app[LOG])
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_background_work)
    app.cleanup_ctx.append(_auth_failure_counter)
    app.router.add_post("/v1/chat/completions", handlers.run(CHAT))
    app.router.add_get("/v1/models", handlers.run(MODEL_LIST))
    app.router.add_get("/v1/models/{model:.+}", handlers.run(MODEL_INFO))
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", openapi_handler())
    return app


def _build_paths(app: web.Application, caller: UpstreamCaller) -> None:
    """The request paths, in order. Every path starts with the audit and the metrics, so
    they leave last and see how the request ended; moving a stage is moving its line."""
    config = app[CONFIG]
    auth = Authenticator(config, app[_AUTH_FAILURES])
    router = Router(config)
    safety = SafetyModel(router, caller, app[METRICS])
    audit, metrics = Audit(app[_AUDIT_LOG]), Metrics(app[METRICS])
    chat: list[Stage] = [
        audit,
        metrics,
        auth,
        Validator(config.server.max_body_bytes),
        router,
        PolicyStage(config),
        ContextLength(),
        Translator(),
        RateLimitStage(config, app[LIMITER], app[TASKS], app[LOG], app[METRICS]),
        SafetyCheck(safety),
        CallUpstream(caller),
        AnswerCheck(safety),
        Relay(app[LIVE_STREAMS]),
    ]
    app[CHAT] = Pipeline(chat, app[LOG])
    app[MODEL_LIST] = Pipeline([audit, metrics, auth, ModelList(router)], app[LOG])
    app[MODEL_INFO] = Pipeline([audit, metrics, auth, ModelInfo(router)], app[LOG])


def _limiter_backend(config: GatewayConfig) -> LimiterBackend:
    url = config.rate_limits.redis_url
    return RedisLimiter(config.rate_limits, url) if url else MemoryLimiter()


async def _background_work(app: web.Application) -> AsyncIterator[None]:
    await app[LIMITER].warm_up()
    yield
    # Settle what in-flight requests left behind before the limiter goes away.
    await app[TASKS].drain(seconds=5.0)
    await app[LIMITER].close()


async def _auth_failure_counter(app: web.Application) -> AsyncIterator[None]:
    await app[_AUTH_FAILURES].warm_up()
    yield
    await app[_AUTH_FAILURES].close()


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(
        limit=sum(u.max_connections for u in config.upstreams.values()),
        limit_per_host=0,  # each upstream's own bound is kept by its pool (upstream/pool)
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
    # The session needs a running loop, so the paths that call upstreams are built here.
    _build_paths(app, app[UPSTREAMS])
    yield
    await session.close()


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given is not None and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(16)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    exchange = Exchange(request_id=_request_id(request), http=request)
    if _encoded_body(request):
        return await _refuse_encoded_body(request, exchange)
    request[EXCHANGE] = exchange
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
    except GatewayError as error:
        response = error_response(error)
    except web.HTTPException as http_error:
        response = error_response(_from_http_exception(http_error))
    except ConnectionResetError:
        raise  # the client left (recorded by the pipeline): nothing to answer, no bug
    except Exception as exc:
        request.app[LOG].error(
            "internal_error", request_id=exchange.request_id, where=where_it_failed(exc)
        )
        response = error_response(InternalError("The gateway failed on its own; this is a bug."))
    finally:
        _access_line(request, exchange, 0 if response is None else response.status)
        # The exchange refers to the request: leaving it in the request would make a cycle
        # that only the garbage collector could free, for every request.
        del request[EXCHANGE]
    if not response.prepared:  # a stream's relay added them before its first byte
        response.headers.update(exchange.response_headers())
    return response


def _encoded_body(request: web.Request) -> bool:
    encodings = request.headers.getall(hdrs.CONTENT_ENCODING, None)
    return encodings is not None and any(e.strip().lower() != "identity" for e in encodings)


async def _refuse_encoded_body(request: web.Request, exchange: Exchange) -> web.StreamResponse:
    """415 for a body with a Content-Encoding, on every path, before any stage (auth
    included) and before a byte of the body is read. The connection is closed rather than
    the body drained: an unread body would otherwise be read and discarded before the next
    request on the connection."""
    response = error_response(
        UnsupportedContentEncoding(
            "Compressed request bodies are not accepted; send the body uncompressed."
        )
    )
    response.headers.update(exchange.response_headers())
    response.headers[hdrs.ACCEPT_ENCODING] = "identity"  # RFC 7694: the codings accepted
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    finally:
        # Closes once the answer is written; aiohttp then skips its drain ("lingering").
        request.protocol.force_close()
        _access_line(request, exchange, response.status)
    return response


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_NAME  # aiohttp's default names its version


async def _worker_header(worker: str, request: web.Request, response: web.StreamResponse) -> None:
    response.headers[WORKER_HEADER] = worker


def _from_http_exception(http_error: web.HTTPException) -> GatewayError:
    """aiohttp's own refusals (unknown route, wrong method, body too large) in our shape."""
    if isinstance(http_error, web.HTTPNotFound):
        return NotFound("No such endpoint.")
    if isinstance(http_error, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            "This endpoint does not accept that HTTP method.",
            headers={"Allow": ", ".join(sorted(http_error.allowed_methods))},
        )
    if isinstance(http_error, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is larger than the gateway accepts.")
    if 400 <= http_error.status < 500:
        return InvalidRequest(f"The request was refused (HTTP {http_error.status}).")
    return InternalError("The gateway failed on its own; this is a bug.")


def _access_line(request: web.Request, exchange: Exchange, status: int) -> None:
    resource = request.match_info.route.resource
    summary = exchange.summary()
    if not summary["status"]:  # no stage ran: a probe, or aiohttp's own answer
        summary["status"] = status
    log = request.app[LOG]
    (log.info if request.path.startswith("/v1/") else log.debug)(
        "request",
        **summary,
        method=request.method,
        # The route's pattern, not the path: `/v1/models/{model}` holds client text.
        path="(unknown)" if resource is None else resource.canonical,
        stream=exchange.stream,
        first_byte_ms=None
        if exchange.relayed.first_byte_ms is None
        else round(exchange.relayed.first_byte_ms, 3),
    )
