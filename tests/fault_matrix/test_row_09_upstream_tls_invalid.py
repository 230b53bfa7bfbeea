"""Row 9: an upstream whose TLS certificate is invalid: signed by an unknown CA, issued
for another host name, or expired (trustme CAs on loopback).

Best in class: fail closed: a 503 in the OpenAI error shape, every attempt verified, and
the request never sent with verification turned off (the upstream receives nothing). The
fault proxy in front of the upstream counts the TLS connections the gateway opened."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp.test_utils import TestServer

from gateway.testing.fake_upstream import FakeUpstream
from tests.conftest import (
    UPSTREAM_KEY,
    RunningUpstream,
    StartGateway,
    StartProxy,
    chat_body,
    config_dict,
    post_chat,
)

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def issue(ca: trustme.CA, kind: str) -> trustme.LeafCert:
    if kind == "wrong_host":
        return ca.issue_cert("upstream.other.example")
    if kind == "expired":
        return ca.issue_cert(
            "127.0.0.1",
            not_before=NOW - datetime.timedelta(days=2),
            not_after=NOW - datetime.timedelta(days=1),
        )
    return ca.issue_cert("127.0.0.1", "localhost")  # valid: "ok" and "unknown_ca"


@pytest.fixture
async def tls_upstream(
    ca: trustme.CA, request: pytest.FixtureRequest
) -> AsyncIterator[RunningUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issue(ca, request.param).configure_cert(context)
    state = FakeUpstream(api_key=UPSTREAM_KEY)
    server = TestServer(state.app())
    await server.start_server(ssl=context)
    yield RunningUpstream(state, server)
    await server.close()


@pytest.mark.parametrize(
    ("tls_upstream", "trust_the_ca", "status"),
    [
        # The control: the same path works with a valid certificate.
        pytest.param("ok", True, 200, id="valid"),
        # A CA the gateway is not told to trust (not in ca_file, not in the system store).
        pytest.param("ok", False, 503, id="unknown_ca"),
        pytest.param("wrong_host", True, 503, id="wrong_host"),
        pytest.param("expired", True, 503, id="expired"),
    ],
    indirect=["tls_upstream"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_row_09_invalid_upstream_certificate_fails_closed(
    start_gateway: StartGateway,
    start_proxy: StartProxy,
    tls_upstream: RunningUpstream,
    ca: trustme.CA,
    tmp_path: Path,
    trust_the_ca: bool,
    status: int,
    stream: bool,
) -> None:
    proxy = await start_proxy(tls_upstream.server.port or 0)
    raw = config_dict(f"https://127.0.0.1:{proxy.port}")
    if trust_the_ca:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        raw["upstreams"]["fake"]["ca_file"] = str(ca_file)
    gateway = await start_gateway(raw)

    reply = await post_chat(gateway, chat_body(stream=stream))

    assert reply.status == status
    if status == 200:
        assert len(tls_upstream.state.requests) == 1
        return
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["message"]) == (
        "upstream_unavailable",
        "The upstream's TLS certificate was not accepted.",
    )
    # Every attempt (max_attempts: 3) opened a connection and verified the certificate;
    # none sent the request anyway.
    assert proxy.accepted == 3
    assert tls_upstream.state.requests == []
