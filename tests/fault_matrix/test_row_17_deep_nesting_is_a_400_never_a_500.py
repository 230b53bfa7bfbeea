"""Row 17: deeply nested JSON is a 400, never a 500 (no RecursionError escapes, nothing
quoted back). The parser takes documents nested up to 200 levels: a request whose
`response_format.schema` brings it to exactly 200 is served, its schema reaching the
upstream intact at full depth; one level more is a 400, as is `[` x 100 000, and the
upstream is not called for either."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, RunningGateway, RunningUpstream, auth

LIMIT = 200  # levels of nesting the JSON parser accepts
# The request object and response_format hold the schema: two levels above it.
ABOVE_SCHEMA = 2


async def post_raw(gateway: RunningGateway, body: bytes) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            data=body,
            headers={**auth(), "Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, await resp.json()


def nested_schema_request(depth: int) -> bytes:
    """A chat request whose JSON nests `depth` levels in all."""
    levels = depth - ABOVE_SCHEMA
    schema = b'{"n":' * levels + b"1" + b"}" * levels
    return (
        b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"hi"}],'
        b'"response_format":{"type":"json_schema","schema":' + schema + b"}}"
    )


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("depth", [LIMIT - 1, LIMIT])
async def test_row_17_a_request_nested_up_to_the_limit_is_served_intact(
    gateway: RunningGateway, upstream: RunningUpstream, depth: int
) -> None:
    status, _ = await post_raw(gateway, nested_schema_request(depth))

    assert status == 200
    [received] = upstream.state.requests
    assert depth_of(received.body["response_format"]["schema"]) == depth - ABOVE_SCHEMA


@pytest.mark.parametrize(
    "body",
    [
        nested_schema_request(LIMIT + 1),
        b"[" * 100_000,
        b'{"model":' * 100_000,
        b'{"model":"m","messages":' + b"[" * 100_000,
    ],
    ids=["limit+1", "brackets", "objects", "inside a request"],
)
async def test_row_17_nesting_past_the_limit_is_a_400(
    gateway: RunningGateway, upstream: RunningUpstream, body: bytes
) -> None:
    status, answer = await post_raw(gateway, body)

    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith("The request body is not valid JSON: ")
    assert "recursion limit" in answer["error"]["message"]
    assert upstream.state.requests == []
