"""The model endpoints as the last stage of their short pipelines: `GET /v1/models` lists
exactly the models the route stage would let the team call, and `GET /v1/models/{id}`
describes one of them (404 `model_not_found` otherwise, as a chat request would get).

Reads: `team`. Writes: `response`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic_core import to_json

from gateway.pipeline import Exchange, Stage, need
from gateway.routing import Route
from gateway.stages.route import Router


class ModelList(Stage):
    name = "list_models"

    def __init__(self, router: Router) -> None:
        self._router = router
        self._created = int(time.time())

    async def enter(self, exchange: Exchange) -> None:
        team = need(exchange.team, "the team")
        models = [_model(route, self._created) for route in self._router.models_for(team.name)]
        exchange.response = _json({"object": "list", "data": models})


class ModelInfo(Stage):
    name = "retrieve_model"

    def __init__(self, router: Router) -> None:
        self._router = router
        self._created = int(time.time())

    async def enter(self, exchange: Exchange) -> None:
        team = need(exchange.team, "the team")
        route = self._router.resolve(team.name, exchange.http.match_info["model"])
        exchange.response = _json(_model(route, self._created))


def _model(route: Route, created: int) -> dict[str, Any]:
    return {
        "id": route.model,
        "object": "model",
        "created": created,
        "owned_by": route.config.owned_by,
    }


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=to_json(body), content_type="application/json")
