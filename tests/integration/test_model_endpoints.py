"""What the `openai` SDK's model calls see: `models.list()` and `models.retrieve()` show
exactly the models a chat request may use (the team's list narrowed by its policies'
`allowed_models`: one owner for both), and a model the team may not use is a 404 that names
the model as OpenAI does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    OTHER_TEAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    config_dict,
    sdk_for,
)


@pytest.fixture
async def narrowed(start_gateway: StartGateway, upstream: RunningUpstream) -> RunningGateway:
    """team-a may list two models, but a policy allows it only one of them."""
    raw = config_dict(upstream.url)
    raw["policies"] = {"only-llama": {"caps": {"allowed_models": [MODEL]}}}
    raw["teams"]["team-a"]["policies"] = ["only-llama"]
    return await start_gateway(raw)


@pytest.fixture
async def sdk(narrowed: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_for(narrowed) as client:
        yield client


async def test_listing_shows_only_what_the_policy_lets_the_team_call(
    sdk: openai.AsyncOpenAI,
) -> None:
    listed = [model.id async for model in sdk.models.list()]

    assert listed == [MODEL]
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}]
        )


async def test_retrieve_describes_a_model_the_team_may_use(sdk: openai.AsyncOpenAI) -> None:
    model = await sdk.models.retrieve(MODEL)

    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "llm-gateway")


@pytest.mark.parametrize("model", [OPENAI_MODEL, OTHER_TEAM_MODEL, "no-such-model"])
async def test_retrieve_of_a_model_the_team_may_not_use_is_the_same_404_as_a_request(
    sdk: openai.AsyncOpenAI, model: str
) -> None:
    with pytest.raises(openai.NotFoundError) as retrieved:
        await sdk.models.retrieve(model)
    with pytest.raises(openai.NotFoundError) as requested:
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])

    for caught in (retrieved.value, requested.value):
        assert caught.code == "model_not_found"
        assert caught.param == "model"
        assert f"The model `{model}` does not exist or you do not have access to it." in (
            caught.message
        )
