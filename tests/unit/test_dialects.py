"""Dialects: a normalized contract request in, the exact upstream JSON out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.dialects import DIALECTS
from gateway.dialects.base import Fate, refuse_or_drop
from gateway.errors import InvalidRequest
from gateway.stages.validate import parse_chat_request

USER = [{"role": "user", "content": "hi"}]


def build(dialect: str, **params: Any) -> dict[str, Any]:
    request = parse_chat_request(
        json.dumps({"model": "public", "messages": USER, **params}).encode()
    )
    return DIALECTS[dialect].build_body(request, "upstream-name", "public")


def test_together_forwards_the_contract_as_is() -> None:
    params = {
        "max_tokens": 5,
        "temperature": 0.3,
        "top_k": 4,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "stop": ["x"],
        "logprobs": 3,
        "echo": True,
        "safety_model": "meta-llama/Llama-Guard-4-12B",
        "compliance": "hipaa",
        "reasoning": {"enabled": False},
        "context_length_exceeded_behavior": "truncate",
        "response_format": {"type": "regex", "pattern": "[a-z]+"},
    }

    assert build("together", **params) == {"model": "upstream-name", "messages": USER, **params}


def test_together_takes_openai_json_schema_as_top_level_schema() -> None:
    body = build(
        "together",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
        },
    )

    assert body["response_format"] == {"type": "json_schema", "schema": {"type": "object"}}


def test_openai_translates_contract_forms_to_openai_forms() -> None:
    body = build(
        "openai",
        max_tokens=9,
        logprobs=4,
        stop="END",
        context_length_exceeded_behavior="error",
        response_format={"type": "json_schema", "schema": {"type": "object"}},
    )

    assert body == {
        "model": "upstream-name",
        "messages": USER,
        "max_completion_tokens": 9,
        "logprobs": True,
        "top_logprobs": 4,
        "stop": ["END"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": {"type": "object"}},
        },
    }


def test_openai_keeps_the_clients_schema_name_and_strictness() -> None:
    body = build(
        "openai",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {}, "strict": True},
        },
    )

    assert body["response_format"]["json_schema"] == {
        "name": "answer",
        "schema": {},
        "strict": True,
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"top_k": 3}, "top_k"),
        ({"min_p": 0.2}, "min_p"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"echo": True}, "echo"),
        ({"safety_model": "meta-llama/Llama-Guard-4-12B"}, "safety_model"),
        ({"compliance": "hipaa"}, "compliance"),
        ({"reasoning": {"enabled": True}}, "reasoning"),
    ],
)
def test_openai_refuses_what_it_cannot_honour_naming_param_and_model(
    params: dict[str, Any], param: str
) -> None:
    request = parse_chat_request(json.dumps({"model": "m", "messages": USER, **params}).encode())
    unsupported = frozenset(
        name for name, fate in DIALECTS["openai"].fates.items() if fate is Fate.UNSUPPORTED
    )

    with pytest.raises(InvalidRequest) as refused:
        refuse_or_drop(request, unsupported, frozenset(), "public", "openai")
    kept, dropped = refuse_or_drop(request, unsupported, frozenset({param}), "public", "openai")

    assert refused.value.param == param
    assert refused.value.code == "unsupported_parameter"
    assert "'public'" in refused.value.message
    assert dropped == [param] and getattr(kept, param) is None


@pytest.mark.parametrize(
    ("dialect", "params", "param"),
    [
        (
            "openai",
            {"response_format": {"type": "regex", "pattern": "a+"}},
            "response_format.pattern",
        ),
        (
            "openai",
            {"context_length_exceeded_behavior": "truncate"},
            "context_length_exceeded_behavior",
        ),
        (
            "vllm",
            {"context_length_exceeded_behavior": "truncate"},
            "context_length_exceeded_behavior",
        ),
    ],
)
def test_values_a_dialect_cannot_honour_are_refused(
    dialect: str, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        build(dialect, **params)

    assert refused.value.param == param
    assert refused.value.code == "unsupported_parameter"


def test_vllm_passes_its_extras_and_maps_structured_outputs_and_reasoning() -> None:
    body = build(
        "vllm",
        top_k=4,
        min_p=0.1,
        repetition_penalty=1.1,
        echo=True,
        logprobs=2,
        reasoning={"enabled": False},
        response_format={"type": "regex", "pattern": "[0-9]+"},
    )

    assert body == {
        "model": "upstream-name",
        "messages": USER,
        "top_k": 4,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "echo": True,
        "logprobs": True,
        "top_logprobs": 2,
        "chat_template_kwargs": {"enable_thinking": False},
        "structured_outputs": {"regex": "[0-9]+"},
    }


def test_vllm_takes_json_schema_in_openai_form() -> None:
    body = build("vllm", response_format={"type": "json_schema", "schema": {"type": "object"}})

    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
