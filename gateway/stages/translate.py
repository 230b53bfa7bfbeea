"""Translation stage: the request as it will leave the gateway, in each dialect the model's
upstreams speak, built before admission, so a request that no upstream can honour is
refused (400) without spending the team's rate limit, and retries reuse the bodies.

What leaves differs from what the client sent in two ways decided here: the parameters the
gateway enforces itself (`compliance`, `safety_model`, `context_length_exceeded_behavior`)
are removed unless every upstream of the route takes them natively, and a stream always
asks its upstream for a final usage chunk, so that it can be charged exactly (the relay
hides that chunk from a client that did not ask for it).

Reads: `fitted` (the request), `policy` (the route). Writes: `translation`.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json

from gateway.contract import ChatCompletionRequest, StreamOptions
from gateway.dialects.base import GATEWAY_ENFORCED, refuse_or_drop
from gateway.pipeline import Exchange, Stage, need
from gateway.routing import Route, Translation

_WITH_USAGE = StreamOptions(include_usage=True)


class Translator(Stage):
    name = "translate"

    async def enter(self, exchange: Exchange) -> None:
        route = need(exchange.policy, "the policy decision").route
        exchange.translation = translate(route, need(exchange.fitted, "the request").request)


def translate(route: Route, request: ChatCompletionRequest) -> Translation:
    changes: dict[str, Any] = {
        param: None
        for param in GATEWAY_ENFORCED
        if param not in route.native and getattr(request, param) is not None
    }
    if request.is_stream and not (request.stream_options and request.stream_options.include_usage):
        changes["stream_options"] = _WITH_USAGE
    if changes:
        request = request.model_copy(update=changes)
    request, dropped = refuse_or_drop(
        request, route.unsupported, route.droppable, route.model, route.dialects
    )
    bodies: dict[tuple[str, str], bytes] = {}
    for target in route.targets:
        key = (target.dialect.name, target.upstream_model)
        if key not in bodies:
            body = target.dialect.build_body(request, target.upstream_model, route.model)
            bodies[key] = to_json(body)
    return Translation(bodies, tuple(dropped))
