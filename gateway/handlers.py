"""HTTP handlers. The chat handler reads top to bottom like the request path:
auth → validate → route → translate → upstream → relay; the middleware in `app.py`
answers errors and writes the access line."""

from __future__ import annotations

import time

from aiohttp import web
from pydantic_core import to_json

from gateway.appkeys import AUTHENTICATOR, CONFIG, REQUEST_CONTEXT, ROUTER, UPSTREAMS
from gateway.relay import relay_json, relay_stream
from gateway.stages.validate import read_chat_request

_STARTED = int(time.time())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    server = app[CONFIG].server
    ctx = request[REQUEST_CONTEXT]

    team = app[AUTHENTICATOR].authenticate(request.headers.get("Authorization"))
    ctx.team = team.name

    chat = await read_chat_request(request, server.max_body_bytes)
    ctx.stream = chat.is_stream

    route = app[ROUTER].resolve(team.name, chat.model)
    ctx.model = route.model

    target = route.targets[0]
    body = to_json(target.dialect.build_body(chat, target.upstream_model, route.model))
    ctx.upstream = target.upstream_name

    async with app[UPSTREAMS].post_chat(target.upstream_name, body, ctx.request_id) as upstream:
        if chat.is_stream:
            return await relay_stream(
                request, upstream, ctx, {"x-request-id": ctx.request_id}, server.max_event_bytes
            )
        return await relay_json(upstream, ctx, server.max_upstream_body_bytes)


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
    ready = UPSTREAMS in request.app and request.app[UPSTREAMS].ready
    return web.json_response(
        {"status": "ready" if ready else "starting", "config_loaded": CONFIG in request.app},
        status=200 if ready else 503,
    )
