"""Fault matrix row 23, slow bodies: a request whose body is not complete within
`server.body_timeout_s` of its headers (announced by Content-Length or chunked) is answered
408 in the OpenAI shape, audited, and its connection closed, while other clients are
served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import TEAM_KEY
from tests.gateway_process import GatewayProcess, gateway_process, raw_request, read_reply

BODY_TIMEOUT_S = 1.0
MARGIN_S = 3.0
HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    f"Authorization: Bearer {TEAM_KEY}\r\n"
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(
        tmp_path_factory.mktemp("row23-body"), body_timeout_s=BODY_TIMEOUT_S
    ) as running:
        yield running


@pytest.mark.parametrize(
    "start",
    [
        "Content-Length: 100\r\n\r\n{",
        'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n',
    ],
    ids=["content-length", "chunked"],
)
def test_row_23_a_body_that_stops_arriving_is_answered_408(
    gateway: GatewayProcess, start: str
) -> None:
    request_id = f"slow-body-{start[:7].lower()}"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(f"{HEAD}x-request-id: {request_id}\r\n{start}".encode())
        opened = time.monotonic()
        while time.monotonic() - opened < 0.5:  # the gateway serves others meanwhile
            ok = raw_request(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert ok.status == 200
        reply = read_reply(sock, timeout=BODY_TIMEOUT_S + MARGIN_S, until_closed=True)
        elapsed = time.monotonic() - opened

    assert reply.status == 408
    assert reply.json() == {
        "error": {
            "message": f"The request body was not complete within {BODY_TIMEOUT_S:g} seconds.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
    assert reply.closed
    assert elapsed < BODY_TIMEOUT_S + MARGIN_S
    audits = [r for r in gateway.records("audit") if r["request_id"] == request_id]
    assert [r["status"] for r in audits] == [408]
