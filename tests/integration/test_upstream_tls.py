"""Upstreams over TLS: certificates are always verified (against the system's store or the
upstream's own `ca_file`); an untrusted or misnamed certificate is a 503 and the request is
never sent without verification; an https upstream serves HIPAA requests without the
test-only loopback exemption."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestServer

from gateway.testing.fake_upstream import FakeUpstream
from tests.conftest import (
    MODEL,
    UPSTREAM_KEY,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    post_chat,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def tls_upstream(ca: trustme.CA, *names: str) -> RunningUpstream:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    state = FakeUpstream(api_key=UPSTREAM_KEY)
    server = TestServer(state.app())
    await server.start_server(ssl=context)
    return RunningUpstream(state, server)


@pytest.fixture
async def trusted_name(ca: trustme.CA) -> AsyncIterator[RunningUpstream]:
    running = await tls_upstream(ca, "127.0.0.1", "localhost")
    yield running
    await running.server.close()


@pytest.fixture
async def wrong_name(ca: trustme.CA) -> AsyncIterator[RunningUpstream]:
    running = await tls_upstream(ca, "upstream.other.example")
    yield running
    await running.server.close()


async def start(
    start_gateway: StartGateway, upstream: RunningUpstream, ca_file: Path | None
) -> RunningGateway:
    raw = config_dict(upstream.url)
    assert upstream.url.startswith("https://")
    raw["security"] = {"allow_plaintext_loopback_hipaa": False}
    if ca_file is not None:
        raw["upstreams"]["fake"]["ca_file"] = str(ca_file)
    raw["retries"] = {"max_attempts": 1}
    return await start_gateway(raw)


async def post(gateway: RunningGateway, **params: Any) -> tuple[int, Any]:
    reply = await post_chat(gateway, chat_body(**params))
    return reply.status, reply.json()


def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_upstream_signed_by_its_configured_ca_serves_hipaa_over_https(
    start_gateway: StartGateway, trusted_name: RunningUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    gateway = await start(start_gateway, trusted_name, ca_pem(ca, tmp_path))

    status, body = await post(gateway, model=MODEL, compliance="hipaa")

    assert status == 200
    assert body["choices"][0]["message"]["content"] == "echo: hello there"
    assert len(trusted_name.state.requests) == 1


async def test_certificate_from_an_unknown_ca_is_refused(
    start_gateway: StartGateway, trusted_name: RunningUpstream
) -> None:
    gateway = await start(start_gateway, trusted_name, None)

    status, body = await post(gateway)

    assert status == 503
    assert body["error"]["message"] == "The upstream's TLS certificate was not accepted."
    assert trusted_name.state.requests == []  # nothing sent without verification


async def test_certificate_for_another_name_is_refused(
    start_gateway: StartGateway, wrong_name: RunningUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    gateway = await start(start_gateway, wrong_name, ca_pem(ca, tmp_path))

    status, body = await post(gateway)

    assert status == 503
    assert "TLS certificate" in body["error"]["message"]
    assert wrong_name.state.requests == []


async def test_plain_http_upstream_is_not_eligible_for_hipaa_without_the_test_exemption(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["security"] = {"allow_plaintext_loopback_hipaa": False}
    gateway = await start_gateway(raw)

    status, body = await post(gateway, compliance="hipaa")

    assert (status, body["error"]["code"]) == (400, "hipaa_unavailable")
    assert upstream.state.requests == []
