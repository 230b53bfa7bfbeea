"""Dialects: a normalized contract request in, the exact upstream JSON out (golden files
in tests/golden/<dialect>/), and OpenAI-shaped streams relayed with their in-stream errors
raised. The anthropic dialect's own golden cases are in test_dialect_anthropic.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.dialects import DIALECTS
from gateway.dialects.base import Fate, refuse_or_drop
from gateway.errors import GatewayError, InvalidRequest
from gateway.stages.validate import parse_chat_request
from gateway.upstream.client import openai_events
from gateway.upstream.sse import iter_events

USER = [{"role": "user", "content": "hi"}]


def build(dialect: str, **params: Any) -> dict[str, Any]:
    request = parse_chat_request(
        json.dumps({"model": "public", "messages": USER, **params}).encode()
    )
    return DIALECTS[dialect].build_body(request, "upstream-name", "public")


GOLDEN = Path(__file__).parent.parent / "golden"


def golden(pattern: str) -> list[Path]:
    return sorted(GOLDEN.glob(pattern))


@pytest.mark.parametrize(
    "case",
    golden("[!a]*/requests/*.json"),  # anthropic's have their own file
    ids=lambda path: f"{path.parts[-3]}/{path.stem}",
)
def test_golden_request_becomes_the_exact_upstream_body(case: Path) -> None:
    golden_case = json.loads(case.read_text())
    request = parse_chat_request(json.dumps(golden_case["request"]).encode())
    dialect = DIALECTS[case.parts[-3]]

    assert dialect.build_body(request, "upstream-name", "public") == golden_case["upstream"]


@pytest.mark.parametrize(
    "case",
    golden("[!a]*/refusals/*.json"),  # anthropic's have their own file
    ids=lambda path: f"{path.parts[-3]}/{path.stem}",
)
def test_golden_refusal_names_the_parameter(case: Path) -> None:
    """A request the upstream has no place for part of: `refused` holds the error's
    param, code and exact message (which never quotes the client's values)."""
    golden_case = json.loads(case.read_text())
    request = parse_chat_request(json.dumps(golden_case["request"]).encode())
    dialect = DIALECTS[case.parts[-3]]

    with pytest.raises(InvalidRequest) as refused:
        dialect.build_body(request, "upstream-name", "public")

    error = refused.value
    assert {"param": error.param, "code": error.code, "message": error.message} == golden_case[
        "refused"
    ]


def test_every_dialect_has_golden_requests() -> None:
    assert {path.parts[-3] for path in golden("*/requests/*.json")} == set(DIALECTS)


async def relayed(raw: bytes) -> tuple[list[bytes], GatewayError | None]:
    async def chunks() -> AsyncIterator[bytes]:
        yield raw

    out: list[bytes] = []
    try:
        async for batch in openai_events(iter_events(chunks(), 1 << 20), None):
            out += batch
    except GatewayError as error:
        return out, error
    return out, None


@pytest.mark.parametrize(
    "case", golden("vllm/streams/*.upstream.sse"), ids=lambda path: path.name.split(".")[0]
)
async def test_golden_openai_shaped_stream_passes_and_its_errors_are_raised(case: Path) -> None:
    """`<name>.openai.sse` holds the events the relay gets, then, when the upstream reported
    an error inside the stream, a last line `ERROR <status> <message>`."""
    expected = case.with_name(case.name.replace(".upstream.", ".openai.")).read_text()
    expected_events, _, expected_error = expected.partition("ERROR ")

    events, error = await relayed(case.read_bytes())

    assert b"".join(events).decode() == expected_events
    if expected_error:
        status, message = expected_error.strip().split(" ", 1)
        assert error is not None and (error.status, error.message) == (int(status), message)
    else:
        assert error is None


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"top_k": 3}, "top_k"),
        ({"min_p": 0.2}, "min_p"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"echo": True}, "echo"),
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
    ],
)
def test_values_a_dialect_cannot_honour_are_refused(
    dialect: str, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        build(dialect, **params)

    assert refused.value.param == param
    assert refused.value.code == "unsupported_parameter"
