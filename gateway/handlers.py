"""HTTP handlers. The API endpoints only run their request path (the stage lists built in
`app.py`) and return what it produced; the probes and the scrape answer directly."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.appkeys import CONFIG, EXCHANGE, HEALTH, LIMITER, METRICS, UPSTREAMS
from gateway.limiter.redis import RedisLimiter
from gateway.pipeline import Pipeline


def run(path: web.AppKey[Pipeline]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        exchange = request[EXCHANGE]
        await request.app[path].run(exchange)
        return exchange.reply()

    return handle


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
