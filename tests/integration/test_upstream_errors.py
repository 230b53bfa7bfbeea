"""What the client gets when the upstream fails: every failure in the OpenAI error shape,
with the seed's status codes, and never a 401 that blames the client's key."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    TEAM_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    post_chat,
)


async def post(gateway: RunningGateway, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
    reply = await post_chat(gateway, body)
    return reply.status, reply.headers, reply.json()


@asynccontextmanager
async def answered_by(chat: Handler) -> AsyncIterator[str]:
    """An upstream whose chat completions `chat` answers: its base URL, while it serves."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def assert_openai_error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("behavior", "status", "code", "attempts"),
    [
        ("status=500", 503, "upstream_unavailable", 1),
        ("status=502", 503, "upstream_unavailable", 1),
        ("status=503", 503, "upstream_unavailable", 3),
        ("status=504", 504, "upstream_timeout", 3),
        ("status=429", 429, "upstream_rate_limited", 3),
        ("status=401", 503, "upstream_auth_failed", 1),
        ("status=403", 503, "upstream_auth_failed", 1),
        ("reset", 503, "upstream_unavailable", 3),
    ],
)
async def test_upstream_failure_maps_to_gateway_status(
    gateway: RunningGateway,
    upstream: RunningUpstream,
    behavior: str,
    status: int,
    code: str,
    attempts: int,
) -> None:
    """Every attempt fails alike; 429, 503, 504 and resets are retried (3 attempts by
    default), the others are not."""
    upstream.state.default = Behavior.parse(behavior)

    got, _, body = await post(gateway, chat_body())

    assert got == status
    assert assert_openai_error(body)["code"] == code
    assert len(upstream.state.requests) == attempts


@pytest.mark.parametrize("upstream_status", [400, 429, 500, 503, 504])
async def test_an_error_event_before_a_streams_first_event_is_judged_like_its_http_status(
    gateway: RunningGateway, upstream: RunningUpstream, upstream_status: int
) -> None:
    """vLLM reports some errors inside a 200 stream, with the HTTP status as `code`:
    before anything reached the client, the same status, code and retries as if the
    upstream had answered with that status."""
    upstream.state.default = Behavior(status=upstream_status)
    as_status, _, status_body = await post(gateway, chat_body())
    status_attempts = len(upstream.state.requests)
    upstream.state.requests.clear()

    upstream.state.default = Behavior(stream_error=upstream_status)
    in_stream, _, stream_body = await post(gateway, chat_body(stream=True))

    assert in_stream == as_status
    assert stream_body["error"]["code"] == status_body["error"]["code"]
    assert len(upstream.state.requests) == status_attempts


async def test_refused_upstream_credentials_are_a_503_naming_the_operator(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.api_key = "a-different-key"

    status, _, body = await post(gateway, chat_body())

    assert status == 503
    assert "credentials" in body["error"]["message"]
    assert TEAM_KEY not in str(body) and UPSTREAM_KEY not in str(body)


async def test_upstream_retry_after_is_passed_on_with_429(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.state.script.append(Behavior.parse("status=429;retry_after=7"))

    status, headers, _ = await post(gateway, chat_body())

    # Seven seconds is longer than the gateway waits (retries.max_retry_after_s): the
    # client is told when to come back instead.
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert len(upstream.state.requests) == 1


@pytest.mark.parametrize(("upstream_status", "status"), [(400, 400), (404, 404), (422, 400)])
async def test_upstream_request_errors_pass_through_in_openai_shape(
    gateway: RunningGateway, upstream: RunningUpstream, upstream_status: int, status: int
) -> None:
    upstream.state.script.append(Behavior(status=upstream_status))

    got, _, body = await post(gateway, chat_body())

    assert got == status
    assert assert_openai_error(body)["message"] == f"fake upstream error {upstream_status}"


async def test_unreachable_upstream_is_503(start_gateway: StartGateway) -> None:
    # Port 1 on loopback has no listener: the connection is refused at once.
    gateway = await start_gateway(config_dict("http://127.0.0.1:1"))

    status, _, body = await post(gateway, chat_body())

    assert status == 503
    assert assert_openai_error(body)["code"] == "upstream_unavailable"


async def test_hung_only_upstream_is_504_within_the_first_byte_timeout(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    """A timed-out try is retried only on another upstream (the same one again would
    double the wait): a model's only upstream gets one try."""
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["timeouts"] = {"connect": 1, "first_byte": 0.5, "idle": 5, "total": 10}
    gateway = await start_gateway(raw)
    upstream.state.script.append(Behavior(hang=True))

    started = time.perf_counter()
    status, _, body = await post(gateway, chat_body())
    elapsed = time.perf_counter() - started

    assert status == 504
    assert assert_openai_error(body)["code"] == "upstream_timeout"
    assert 0.5 <= elapsed < 2.0
    assert len(upstream.state.requests) == 1  # the next one would have been answered


async def test_upstream_answer_that_is_not_json_is_503(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    # An upstream that answers 200 with HTML, as a misconfigured base_url would.
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async with answered_by(html) as url:
        gateway = await start_gateway(config_dict(url))
        status, _, body = await post(gateway, chat_body())

    assert status == 503
    assert "not JSON" in assert_openai_error(body)["message"]


async def test_openai_dialect_refuses_what_it_cannot_honour(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    status, _, body = await post(gateway, chat_body(model="gpt-4o-mini", top_k=5))

    assert status == 400
    assert body["error"]["param"] == "top_k"
    assert body["error"]["code"] == "unsupported_parameter"
    assert "gpt-4o-mini" in body["error"]["message"]
    assert upstream.state.requests == []


async def test_model_forwarded_is_upstream_name_for_public_name(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    status, _, _ = await post(gateway, chat_body(model=MODEL))

    assert status == 200
    assert upstream.state.requests[-1].body["model"] == "fake/llama-3.1-8b"


@pytest.mark.parametrize(
    ("code", "passed_on"),
    [
        ("context_length_exceeded", "context_length_exceeded"),
        (400, "400"),  # vLLM's codes are HTTP statuses
        ("the prompt said: hello there, and more", None),  # not an identifier: dropped
        ("x" * 65, None),
    ],
)
async def test_an_upstream_error_code_is_passed_on_only_when_it_is_an_identifier(
    start_gateway: StartGateway, upstream: RunningUpstream, code: Any, passed_on: str | None
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        error = {"message": "no", "type": "invalid_request_error", "param": None, "code": code}
        return web.json_response({"error": error}, status=400)

    async with answered_by(refuse) as url:
        gateway = await start_gateway(config_dict(url))
        status, _, body = await post(gateway, chat_body())

    assert status == 400
    assert assert_openai_error(body)["code"] == passed_on
    (audit,) = gateway.log_records("audit")
    assert audit["error_code"] == passed_on
