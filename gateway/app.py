"""Application assembly, in two parts that live differently.

`build_app(config)` makes the application and what lives as long as the process, whatever
reloads happen (`reload.SharedParts`, completed at start-up with the upstream connections, which
needs the running loop): the loggers and the audit trail, the metrics, the background
tasks, the live streams, the rate-limit backend and its unconfirmed settlements, passive
health, the failed-authentication limits, the retry budget, the connection pools, the key
expiry log. It adds the routes once; their handlers run the paths in force, read per
request from one holder (`reload.PATHS`). `request_middleware` gives every request its id
and exchange, refuses compressed bodies from their headers, answers aiohttp's own refusals
in the OpenAI shape and writes one access line per request.

`build_paths(shared, config, ...)` makes one generation of the request paths from a
configuration: the ordered stage lists of the three API endpoints, with everything the
stages derive from the configuration (keys, routes, policies, limits, upstream endpoints),
each stage holding only shared parts besides. It runs once at start-up and then, off the
event loop, at every reload (`reload.Reloader`), which calls `adopt` on the loop to fit the
shared parts to the new configuration just before it swaps the holder.

The connections themselves (timeouts, cap, malformed HTTP) are `connections.py`'s.
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TextIO

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway import handlers
from gateway.appkeys import (
    AUDIT_TRAIL,
    CONFIG,
    EXCHANGE,
    HEALTH,
    LIMITER,
    LIVE_STREAMS,
    LOG,
    METRICS,
    PATHS,
    RELOADER,
    RETRY_BUDGET,
    SHARED,
    TASKS,
)
from gateway.auth_failures import AuthFailureLimit
from gateway.config import ConfigFile, GatewayConfig
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
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.logs import LineLog, make_access_log, make_logger, where_it_failed
from gateway.observability.metrics import GatewayMetrics, UpstreamHealthCollector
from gateway.openapi import handler as openapi_handler
from gateway.pipeline import Exchange, Pipeline, Stage, error_response
from gateway.reload import Paths, PathsHolder, Reloader, SharedParts
from gateway.routing import SpanValue
from gateway.stages.audit import Audit
from gateway.stages.audit_gate import AuditGate
from gateway.stages.auth import Authenticator
from gateway.stages.context_length import ContextLength
from gateway.stages.metrics import Metrics
from gateway.stages.models import ModelInfo, ModelList
from gateway.stages.policy import PolicyStage
from gateway.stages.ratelimit import RateLimitStage, Settlements
from gateway.stages.relay import LiveStreams, Relay
from gateway.stages.route import Router
from gateway.stages.safety import AnswerCheck, SafetyCheck, SafetyModel
from gateway.stages.trace import Trace, Traced
from gateway.stages.translate import Translator
from gateway.stages.upstream import CallUpstream
from gateway.stages.validate import Validator
from gateway.tasks import BackgroundTasks
from gateway.teams import KeyExpiryLog, team_keys, teams_of
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.capacity import upstream_capacity
from gateway.upstream.client import UpstreamClient, connection_pools
from gateway.upstream.health import HealthBook
from gateway.upstream.http1 import Connections
from gateway.upstream.retry import RetryBudget

if TYPE_CHECKING:
    from gateway.observability.tracing import Tracing

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ACCESS_LOG = web.AppKey("access_log", LineLog)
_AUTH_FAILURES = web.AppKey("auth_failures", AuthFailureLimit)
_TRACING: web.AppKey[Tracing] = web.AppKey("tracing")  # only when tracing is configured
# Names the worker process that answered, when several serve the port (supervisor.py).
WORKER_HEADER = "x-gateway-worker"
# What a traced stage adds to its span, read from the exchange once the stage is done.
SpanAttributes = Callable[[Exchange], dict[str, SpanValue]]


def build_app(
    config: GatewayConfig | ConfigFile,
    *,
    log_stream: TextIO | None = None,
    limiter: LimiterBackend | None = None,
    worker: str | None = None,
) -> web.Application:
    """The gateway application. Given the `ConfigFile` it was read from, it can reload it
    (see `reload`); given a configuration alone, it cannot. `limiter` replaces the backend
    the config names (tests pass one with a fake clock); `worker` is the id of the worker
    process it runs in, when there are several (its log lines and answers say it)."""
    source = config if isinstance(config, ConfigFile) else None
    config = config.config if isinstance(config, ConfigFile) else config
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
    app[_ACCESS_LOG] = make_access_log(config.server, app[LOG], log_stream, worker)
    app[METRICS] = GatewayMetrics()
    app[AUDIT_TRAIL] = AuditTrail(config.audit, app[METRICS], app[LOG], log_stream)
    app.on_cleanup.append(_close_audit_trail)
    app[TASKS] = BackgroundTasks(app[LOG])
    app[LIVE_STREAMS] = LiveStreams()
    app[LIMITER] = limiter or _limiter_backend(config)
    app[HEALTH] = HealthBook(config.health, _upstreams_of_models(config))
    app[METRICS].registry.register(UpstreamHealthCollector(app[HEALTH].in_service))
    app[_AUTH_FAILURES] = AuthFailureLimit(config, app[METRICS], app[LOG])
    app[RETRY_BUDGET] = RetryBudget(config.retries)
    paths = app[PATHS] = PathsHolder()
    app[RELOADER] = Reloader(paths, source, app[METRICS], app[LOG], app[TASKS])
    app.cleanup_ctx.append(functools.partial(_tracing, worker))
    app.cleanup_ctx.append(_upstream_connections)
    app.cleanup_ctx.append(_background_work)
    app.cleanup_ctx.append(_auth_failure_counter)
    # The routes are fixed; the paths they run are whichever generation is in force when
    # a request starts (one attribute read), and stay that request's to its end.
    app.router.add_post("/v1/chat/completions", handlers.run(paths, _chat))
    app.router.add_get("/v1/models", handlers.run(paths, _model_list))
    app.router.add_get("/v1/models/{model:.+}", handlers.run(paths, _model_info))
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", openapi_handler())
    return app


def _chat(paths: Paths) -> Pipeline:
    return paths.chat


def _model_list(paths: Paths) -> Pipeline:
    return paths.model_list


def _model_info(paths: Paths) -> Pipeline:
    return paths.model_info


def build_paths(
    shared: SharedParts, config: GatewayConfig, generation: int, sha256: str | None
) -> Paths:
    """One generation of the request paths, in order. Every path starts with the audit and
    the metrics, so they leave last and see how the request ended; moving a stage is moving
    its line. Changes no shared part: a reload runs it in a thread."""
    client = UpstreamClient(config, shared.connections, shared.pools)
    caller = UpstreamCaller(
        client,
        shared.health,
        config.retries,
        shared.metrics,
        budget=shared.retry_budget,
        capacity=shared.capacity,
    )
    teams = teams_of(config)
    keys = team_keys(config, teams)
    auth = Authenticator(config, shared.auth_failures, keys)
    router = Router(config)
    safety = SafetyModel(router, caller, shared.metrics)
    audit, metrics = Audit(shared.audit_log), Metrics(shared.metrics)
    # After the policy stage, which decides whether the request is under HIPAA; before
    # the rate limiter charges it and anything is sent upstream.
    audit_gate = AuditGate(shared.audit_log, config.audit.on_failure)
    tracing = shared.tracing

    def trace(route: str, operation: str | None = None) -> list[Stage]:
        return [] if tracing is None else [Trace(tracing, route, operation)]

    def traced(
        stage: Stage,
        span: str,
        attributes: SpanAttributes | None = None,
        applies: Callable[[Exchange], bool] | None = None,
    ) -> Stage:
        return stage if tracing is None else Traced(stage, span, attributes, applies)

    chat: list[Stage] = [
        audit,
        metrics,
        *trace("/v1/chat/completions", "chat"),
        auth,
        Validator(config.server.max_body_bytes),
        router,
        PolicyStage(config),
        audit_gate,
        ContextLength(),
        Translator(),
        traced(
            RateLimitStage(
                config, shared.limiter, shared.tasks, shared.log, shared.metrics, shared.settlements
            ),
            "rate_limit",
        ),
        traced(SafetyCheck(safety), "safety_check", _safety_verdict, _safety_asked),
        CallUpstream(caller),
        traced(AnswerCheck(safety), "answer_safety_check", _answer_verdict, _answer_checked),
        Relay(shared.live_streams),
    ]
    return Paths(
        generation=generation,
        config=config,
        sha256=sha256,
        chat=Pipeline(chat, shared.log),
        model_list=Pipeline(
            [audit, metrics, *trace("/v1/models"), auth, audit_gate, ModelList(router)],
            shared.log,
        ),
        model_info=Pipeline(
            [audit, metrics, *trace("/v1/models/{model}"), auth, audit_gate, ModelInfo(router)],
            shared.log,
        ),
        keys=tuple(keys),
    )


def _safety_asked(exchange: Exchange) -> bool:
    """The safety stage asks the safety model (not when the upstream checks natively)."""
    policy = exchange.policy
    return policy is not None and policy.safety_model is not None and not policy.native_safety


def _answer_checked(exchange: Exchange) -> bool:
    policy = exchange.policy
    return (
        _safety_asked(exchange)
        and policy is not None
        and policy.safety is not None
        and policy.safety.check_output
    )


def _safety_verdict(exchange: Exchange) -> dict[str, SpanValue]:
    return {"llm_gateway.safety.verdict": exchange.safety_verdict}


def _answer_verdict(exchange: Exchange) -> dict[str, SpanValue]:
    verdict = exchange.answer_verdict
    return {} if verdict is None else {"llm_gateway.safety.verdict": verdict}


def adopt(shared: SharedParts, paths: Paths) -> None:
    """Fits the shared parts to the configuration of `paths`, about to be put in force (on
    the event loop, just before the swap). What a reload may not change is refused before
    this (`reload.restart_needed`)."""
    config = paths.config
    shared.health.remodel(config.health, _upstreams_of_models(config))
    shared.retry_budget.configure(config.retries)
    for name, upstream in config.upstreams.items():
        shared.pools[name].timeout = upstream.pool_timeout
    shared.key_expiry.watch(paths.keys)


def _upstreams_of_models(config: GatewayConfig) -> dict[str, list[str]]:
    return {name: [t.upstream for t in model.upstreams] for name, model in config.models.items()}


def _limiter_backend(config: GatewayConfig) -> LimiterBackend:
    url = config.rate_limits.redis_url
    return RedisLimiter(config.rate_limits, url) if url else MemoryLimiter()


async def _background_work(app: web.Application) -> AsyncIterator[None]:
    await app[LIMITER].warm_up()
    yield
    # Settle what in-flight requests left behind before the limiter goes away.
    await app[TASKS].drain(seconds=5.0)
    await app[LIMITER].close()


async def _close_audit_trail(app: web.Application) -> None:
    app[AUDIT_TRAIL].close()


async def _auth_failure_counter(app: web.Application) -> AsyncIterator[None]:
    await app[_AUTH_FAILURES].warm_up()
    yield
    await app[_AUTH_FAILURES].close()


async def _tracing(worker: str | None, app: web.Application) -> AsyncIterator[None]:
    """The process's tracer, when `tracing.endpoint` is set: made here, in the process
    that serves (after a worker's fork), and flushed at the end."""
    config = app[CONFIG].tracing
    if config.endpoint is None:
        yield
        return
    # Imported only here: the SDK and its exporter are a fifth of the process's memory
    # and most of its import time, for nothing when tracing is off.
    from gateway.observability.tracing import Tracing

    tracing = app[_TRACING] = Tracing(config, config.endpoint, worker)
    yield
    await asyncio.get_running_loop().run_in_executor(None, tracing.close)


async def _upstream_connections(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    connections = Connections()
    shared = app[SHARED] = SharedParts(
        log=app[LOG],
        audit_log=app[AUDIT_TRAIL],
        metrics=app[METRICS],
        tasks=app[TASKS],
        live_streams=app[LIVE_STREAMS],
        limiter=app[LIMITER],
        health=app[HEALTH],
        auth_failures=app[_AUTH_FAILURES],
        settlements=Settlements(),
        retry_budget=app[RETRY_BUDGET],
        pools=connection_pools(config),
        capacity=upstream_capacity(config, app[METRICS]),
        connections=connections,
        key_expiry=KeyExpiryLog(app[LOG]),
        tracing=app.get(_TRACING),
    )
    # Made with the running loop, as are the paths that call upstreams.
    app[RELOADER].start(
        config, functools.partial(build_paths, shared), functools.partial(adopt, shared)
    )
    yield
    shared.key_expiry.close()
    await connections.close()


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
    log = request.app[_ACCESS_LOG]
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
