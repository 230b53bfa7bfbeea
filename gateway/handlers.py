"""HTTP handlers. The API endpoints only run their request path (the stage lists built in
`app.py`) and return what it produced; the probes and the scrape answer directly."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.appkeys import EXCHANGE, HEALTH, LIMITER, METRICS, PATHS, RELOADER, SHARED
from gateway.limiter.redis import RedisLimiter
from gateway.pipeline import Pipeline
from gateway.reload import Paths, PathsHolder


def run(holder: PathsHolder, path: Callable[[Paths], Pipeline]) -> Handler:
    """The handler of an API endpoint: `path` of the generation in force."""

    async def handle(request: web.Request) -> web.StreamResponse:
        exchange = request[EXCHANGE]
        # Read once: the request runs on this generation to its end, whatever reloads
        # happen meanwhile (a stream included).
        await path(holder.current).run(exchange)
        return exchange.reply()

    return handle


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    paths = app[PATHS].peek()
    ready = paths is not None and SHARED in app and not app[SHARED].connections.closed
    limiter = app[LIMITER]
    # A Redis outage degrades the limiter (to its failure mode) but not readiness: the
    # gateway still answers, and restarting it would not bring Redis back.
    rate_limiter = (
        ("redis" if limiter.available else "redis-unavailable")
        if isinstance(limiter, RedisLimiter)
        else "memory"
    )
    last = app[RELOADER].last
    return web.json_response(
        {
            "status": "ready" if ready else "starting",
            "config_loaded": paths is not None,
            # The configuration in force: its generation (1 at start-up, one more per
            # reload put in force) and the SHA-256 of its file.
            "config_generation": None if paths is None else paths.generation,
            "config_sha256": None if paths is None else paths.sha256,
            # How the latest reload ended (null before the first): ok, unchanged, invalid,
            # restart_required or failed (then the log says why).
            "config_last_reload": None if last is None else last.result,
            "rate_limiter": rate_limiter,
            "upstreams": app[HEALTH].snapshot(),
        },
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    return web.Response(body=registry.exposition(), headers={"Content-Type": registry.content_type})
