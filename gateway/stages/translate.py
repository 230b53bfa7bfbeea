"""Translation stage: the normalized request into each upstream dialect the model's
upstreams speak, before admission, so a request that no upstream can honour is refused
(400) without spending the team's rate limit, and retries reuse the bodies."""

from __future__ import annotations

from pydantic_core import to_json

from gateway.contract import ChatCompletionRequest
from gateway.dialects.base import refuse_or_drop
from gateway.routing import Route, Translation


def translate(route: Route, request: ChatCompletionRequest) -> Translation:
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
