"""Whatever bytes a client sends, the answer is a 4xx in the OpenAI shape, never a 500,
and the upstream is never called for a request the gateway refused."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningGateway, RunningUpstream, auth, chat_body

JSON = {"Content-Type": "application/json"}


async def send(
    gateway: RunningGateway, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            data=data,
            headers={**auth(), **JSON, **(headers or {})},
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"model": "\xff\xfe", "messages": []}', "not valid JSON"),
        (b'{"model": "\\ud800", "messages": []}', "not valid JSON"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}]} trailing', "JSON"),
    ],
    ids=["truncated", "empty", "array", "string", "null", "deep", "bad-utf8", "surrogate", "junk"],
)
async def test_malformed_body_is_400(
    gateway: RunningGateway, upstream: RunningUpstream, raw: bytes, fragment: str
) -> None:
    status, body = await send(gateway, raw)

    assert status == 400
    assert fragment in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert upstream.state.requests == []


async def test_deeply_nested_value_inside_a_valid_request_is_400(gateway: RunningGateway) -> None:
    nested = "[" * 5000 + "]" * 5000
    raw = ('{"model": "m", "messages": [], "tools": ' + nested + "}").encode()

    status, _ = await send(gateway, raw)

    assert status == 400


async def test_wrong_content_type_is_400(gateway: RunningGateway) -> None:
    status, body = await send(
        gateway, json.dumps(chat_body()), {"Content-Type": "application/x-www-form-urlencoded"}
    )

    assert status == 400
    assert body["error"]["code"] == "unsupported_content_type"


async def test_compressed_body_is_415(gateway: RunningGateway) -> None:
    """That it is refused unread, on every path, is fault matrix row 25's test."""
    compressed = gzip.compress(json.dumps(chat_body()).encode())

    status, body = await send(gateway, compressed, {"Content-Encoding": "gzip"})

    assert status == 415
    assert body["error"]["code"] == "unsupported_content_encoding"


async def test_body_over_the_limit_is_413_by_content_length(gateway: RunningGateway) -> None:
    limit = gateway.config.server.max_body_bytes
    padded = chat_body(user="x" * limit)

    status, body = await send(gateway, io.BytesIO(json.dumps(padded).encode()))

    assert status == 413
    assert body["error"]["code"] == "request_too_large"


async def test_body_over_the_limit_is_413_when_chunked(gateway: RunningGateway) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "user": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    status, body = await send(gateway, chunks())

    assert status == 413
    assert body["error"]["code"] == "request_too_large"


async def test_body_just_under_the_limit_is_accepted(start_gateway: Any) -> None:
    gateway = await start_gateway(max_body_bytes=4096)
    base = len(json.dumps(chat_body(user="")).encode())
    raw = json.dumps(chat_body(user="u" * (4096 - base))).encode()
    assert len(raw) == 4096

    status, _ = await send(gateway, raw)

    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/chat/completions", 405), ("POST", "/v1/nothing-here", 404)],
)
async def test_unknown_routes_answer_in_openai_shape(
    gateway: RunningGateway, method: str, path: str, status: int
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{gateway.url}{path}", headers=auth()) as resp,
    ):
        body = await resp.json()

    assert resp.status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_a_wrong_method_is_told_which_methods_the_endpoint_takes(
    gateway: RunningGateway,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/v1/chat/completions", headers=auth()) as resp,
    ):
        body = await resp.json()

    assert (resp.status, body["error"]["code"]) == (405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"  # RFC 9110: a 405 lists what is allowed
