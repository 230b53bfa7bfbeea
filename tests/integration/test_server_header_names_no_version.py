"""Every answer names the server `llm-gateway`: never the Python and aiohttp versions
aiohttp would advertise, which tell a scanner which known bugs to try."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningGateway, auth, chat_body

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        ("GET", "/healthz", {}, None, 200),
        ("GET", "/metrics", {}, None, 200),
        ("GET", "/v1/models", auth(), None, 200),
        ("POST", "/v1/chat/completions", auth(), chat_body(), 200),
        ("POST", "/v1/chat/completions", auth(), chat_body(stream=True), 200),
        ("POST", "/v1/chat/completions", {}, chat_body(), 401),
        ("GET", "/v1/nothing", {}, None, 404),
        ("GET", "/v1/chat/completions", {}, None, 405),
        ("POST", "/v1/chat/completions", {**auth(), "Content-Encoding": "br"}, {}, 415),
    ],
    ids=["healthz", "metrics", "models", "chat", "stream", "401", "404", "405", "415"],
)
async def test_every_answer_names_the_gateway_without_versions(
    gateway: RunningGateway,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{gateway.url}{path}", json=body, headers=headers) as resp,
    ):
        await resp.read()

    assert resp.status == status
    assert resp.headers.getall("Server") == ["llm-gateway"]
