"""Routing: a team's requested name or alias resolves to one route under the model's public
name; a model the team may not use is indistinguishable from one that does not exist."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.errors import ModelNotFound
from gateway.stages.route import Router
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    OTHER_TEAM_MODEL,
    TEAM_KEY,
    UPSTREAM_MODEL,
    config_dict,
    make_config,
)


def raw_config() -> dict[str, Any]:
    return copy.deepcopy(config_dict("http://127.0.0.1:9"))


@pytest.fixture
def router() -> Router:
    return Router(make_config(raw_config()))


def not_found(router: Router, team: str, model: str) -> ModelNotFound:
    with pytest.raises(ModelNotFound) as caught:
        router.resolve(team, model)
    return caught.value


def test_public_name_resolves_to_its_route(router: Router) -> None:
    route = router.resolve("team-a", MODEL)

    assert route.model == MODEL
    assert [target.upstream_name for target in route.targets] == ["fake"]


def test_alias_resolves_to_the_same_route_under_the_public_name(router: Router) -> None:
    assert router.resolve("team-a", "llama-8b") is router.resolve("team-a", MODEL)
    assert router.resolve("team-a", "llama-8b").model == MODEL


def test_upstream_model_name_is_the_one_configured(router: Router) -> None:
    [target] = router.resolve("team-a", MODEL).targets

    assert target.upstream_model == UPSTREAM_MODEL


def test_upstream_model_name_defaults_to_the_public_name(router: Router) -> None:
    [target] = router.resolve("team-a", OPENAI_MODEL).targets

    assert target.upstream_name == "fake-openai"
    assert target.upstream_model == OPENAI_MODEL


def test_nonexistent_model_raises_model_not_found(router: Router) -> None:
    error = not_found(router, "team-a", "no-such-model")

    assert error.status == 404
    assert error.param == "model"


def test_another_teams_model_is_indistinguishable_from_a_nonexistent_one(
    router: Router,
) -> None:
    forbidden = not_found(router, "team-a", OTHER_TEAM_MODEL)
    missing = not_found(router, "team-a", "no-such-model")

    # The same answer, but for the name the client itself sent.
    assert forbidden.message.replace(OTHER_TEAM_MODEL, "X") == (
        missing.message.replace("no-such-model", "X")
    )
    assert (forbidden.param, forbidden.code) == (missing.param, missing.code)


def test_not_found_names_a_plain_model_identifier_as_openai_does(router: Router) -> None:
    error = not_found(router, "team-a", "gpt-5.1:ft@acme/v2")

    assert error.message.startswith(
        "The model `gpt-5.1:ft@acme/v2` does not exist or you do not have access to it."
    )


@pytest.mark.parametrize(
    "requested",
    [
        "what is the dosage for patient john doe",  # a prompt in the wrong field
        "model\n",
        "x" * 257,
        TEAM_KEY,  # a team's key pasted into the wrong field
    ],
)
def test_not_found_quotes_nothing_but_a_plain_identifier(router: Router, requested: str) -> None:
    error = not_found(router, "team-a", requested)

    assert requested not in error.message
    assert error.message.startswith("The model does not exist or you do not have access to it.")


def test_team_allowed_a_model_by_alias_may_use_its_public_name() -> None:
    raw = raw_config()
    raw["teams"]["team-a"]["models"] = ["llama-8b"]
    router = Router(make_config(raw))

    assert router.resolve("team-a", MODEL).model == MODEL
    assert [route.model for route in router.models_for("team-a")] == [MODEL]


def test_unknown_team_has_no_models(router: Router) -> None:
    assert router.models_for("no-such-team") == []
    assert not_found(router, "no-such-team", MODEL).code == "model_not_found"


def test_models_for_lists_each_allowed_model_once_in_config_order(router: Router) -> None:
    assert [route.model for route in router.models_for("team-a")] == [MODEL, OPENAI_MODEL]
    assert [route.model for route in router.models_for("team-b")] == [OTHER_TEAM_MODEL]


def test_star_gives_every_model_once() -> None:
    raw = raw_config()
    raw["teams"]["team-a"]["models"] = ["*"]
    router = Router(make_config(raw))

    assert [route.model for route in router.models_for("team-a")] == [
        MODEL,
        OPENAI_MODEL,
        OTHER_TEAM_MODEL,
    ]
    assert router.resolve("team-a", OTHER_TEAM_MODEL).model == OTHER_TEAM_MODEL
    assert router.resolve("team-a", "llama-8b").model == MODEL
