"""The model endpoints' last stages on their own: the listing and the description of one
model answer from the route stage's view of the team's access."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.errors import ModelNotFound
from gateway.pipeline import Exchange
from gateway.stages.models import ModelInfo, ModelList
from gateway.stages.route import Router
from gateway.teams import teams_of
from tests.conftest import MODEL, OPENAI_MODEL, an_exchange, unit_config


def body(exchange: Exchange) -> Any:
    assert isinstance(exchange.response, web.Response)
    assert isinstance(exchange.response.body, bytes)
    return json.loads(exchange.response.body)


async def test_the_listing_is_the_teams_models_in_configuration_order() -> None:
    config = unit_config()
    exchange = an_exchange(team=teams_of(config)["team-a"])

    await ModelList(Router(config)).enter(exchange)

    assert [model["id"] for model in body(exchange)["data"]] == [MODEL, OPENAI_MODEL]


async def test_one_model_by_its_alias_is_described_under_its_public_name() -> None:
    config = unit_config()
    http = make_mocked_request("GET", "/v1/models/llama-8b", match_info={"model": "llama-8b"})
    exchange = Exchange(request_id="r", http=http, team=teams_of(config)["team-a"])

    await ModelInfo(Router(config)).enter(exchange)

    assert body(exchange)["id"] == MODEL


async def test_a_model_of_another_team_is_not_described() -> None:
    config = unit_config()
    http = make_mocked_request("GET", "/v1/models/x", match_info={"model": "team-b-private-model"})
    exchange = Exchange(request_id="r", http=http, team=teams_of(config)["team-a"])

    with pytest.raises(ModelNotFound):
        await ModelInfo(Router(config)).enter(exchange)
