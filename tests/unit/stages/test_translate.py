"""The translation stage on its own: the request as it leaves the gateway, once per dialect
of the route. Gateway-enforced parameters leave only for upstreams that take them
natively, and a stream always asks for the usage chunk it is charged by."""

from __future__ import annotations

import json

from gateway.stages.route import Router
from gateway.stages.translate import translate
from tests.conftest import MODEL, OPENAI_MODEL, UPSTREAM_MODEL, a_request, unit_config


def sent(model: str, **params: object) -> dict[str, object]:
    route = Router(unit_config()).resolve("team-a", model)
    translation = translate(route, a_request(model=model, **params))
    [body] = translation.bodies.values()
    parsed: dict[str, object] = json.loads(body)
    return parsed


def test_a_stream_asks_its_upstream_for_usage_even_when_the_client_did_not() -> None:
    assert sent(OPENAI_MODEL, stream=True)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in sent(OPENAI_MODEL)


def test_enforced_parameters_reach_only_upstreams_that_enforce_them_too() -> None:
    params = {"compliance": "hipaa", "context_length_exceeded_behavior": "truncate"}

    native = sent(MODEL, **params)
    enforced_here = sent(OPENAI_MODEL, **params)

    assert native["compliance"] == "hipaa" and native["model"] == UPSTREAM_MODEL
    assert native["context_length_exceeded_behavior"] == "truncate"
    assert "compliance" not in enforced_here
    assert "context_length_exceeded_behavior" not in enforced_here


def test_the_request_given_is_not_changed() -> None:
    request = a_request(model=OPENAI_MODEL, stream=True, compliance="hipaa")
    route = Router(unit_config()).resolve("team-a", OPENAI_MODEL)

    translate(route, request)

    assert request.stream_options is None and request.compliance == "hipaa"
