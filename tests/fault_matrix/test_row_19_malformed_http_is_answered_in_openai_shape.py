"""Fault matrix row 19: requests aiohttp's parser refuses (control characters in a header,
over-long lines, too many headers, a bad request line, a bad or doubled Content-Length,
Transfer-Encoding with Content-Length, bad chunked framing, TLS sent to the plain port) are
answered like every other refusal: the OpenAI error shape with 400, 414 or 431, nothing the
client sent quoted back or logged (a canary sits in the offending bytes, an Authorization
value among them), `Server` without versions, the connection closed, and no upstream
called."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import TEAM_KEY
from tests.gateway_process import (
    GatewayProcess,
    RawReply,
    gateway_process,
    raw_request,
    read_reply,
)

CANARY = "CANARY-9d2e41"
KEY = f"Authorization: Bearer {TEAM_KEY}\r\n"
CHAT = f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{KEY}Content-Type: application/json\r\n"

MALFORMED = {
    "control-char-in-authorization": (
        f"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {CANARY}\x01x\r\n\r\n",
        400,
    ),
    "nul-in-header": (f"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Note: {CANARY}\x00\r\n\r\n", 400),
    "over-long-authorization": (
        f"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {CANARY}{'k' * 20000}"
        "\r\n\r\n",
        431,
    ),
    "too-many-headers": (
        "GET /v1/models HTTP/1.1\r\nHost: t\r\n"
        + "".join(f"X-{i}: {CANARY}\r\n" for i in range(200))
        + "\r\n",
        431,
    ),
    "over-long-request-line": (f"GET /{CANARY}{'p' * 9000} HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "junk-after-version": (f"GET /{CANARY} HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
    "not-a-request-line": (f"{CANARY}\r\n\r\n", 400),
    "bad-method": (f"G{CANARY}@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bad-version": (f"GET / HTTP/9.{CANARY}\r\nHost: t\r\n\r\n", 400),
    "bad-content-length": (f"{CHAT}Content-Length: {CANARY}\r\n\r\n", 400),
    "negative-content-length": (f"{CHAT}X-Note: {CANARY}\r\nContent-Length: -1\r\n\r\n", 400),
    "two-content-lengths": (
        f"{CHAT}X-Note: {CANARY}\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}",
        400,
    ),
    "transfer-encoding-and-content-length": (
        f"{CHAT}X-Note: {CANARY}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n",
        400,
    ),
    "unknown-transfer-encoding": (f"{CHAT}Transfer-Encoding: {CANARY}\r\n\r\n", 400),
    "bad-chunk-size": (f"{CHAT}Transfer-Encoding: chunked\r\n\r\n{CANARY}\r\n{{}}\r\n", 400),
    "space-before-colon": (f"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Note : {CANARY}\r\n\r\n", 400),
    "folded-header": (f"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Note: a\r\n {CANARY}\r\n\r\n", 400),
    "bare-line-feeds": (f"GET /v1/models HTTP/1.1\nHost: t\nX-Note: {CANARY}\n\n", 400),
    "non-ascii-path": (f"GET /v1/models/\u00e9{CANARY} HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "tls-hello": ("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + CANARY, 400),
}


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[socket.socket]:
    """A listening socket standing in for the upstream: any connection to it is a call."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        yield listener


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream_port: socket.socket
) -> Iterator[GatewayProcess]:
    url = f"http://127.0.0.1:{upstream_port.getsockname()[1]}"
    with gateway_process(tmp_path_factory.mktemp("row19"), url) as running:
        yield running


def assert_refused_in_openai_shape(reply: RawReply, status: int) -> None:
    assert reply.status == status, reply.raw[:200]
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["server"] == "llm-gateway"
    assert reply.headers["x-request-id"]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert CANARY.encode() not in reply.raw
    assert TEAM_KEY.encode() not in reply.raw
    assert reply.closed, "the connection stayed open after a malformed request"


@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED.values(), ids=MALFORMED.keys())
def test_row_19_malformed_request_gets_an_openai_error_that_quotes_nothing(
    gateway: GatewayProcess, upstream_port: socket.socket, request_bytes: str, status: int
) -> None:
    reply = raw_request(gateway.port, request_bytes.encode("latin-1"), until_closed=True)

    assert_refused_in_openai_shape(reply, status)
    time.sleep(0.05)  # the log line, if any, is written by now
    assert CANARY not in gateway.output()
    assert TEAM_KEY not in gateway.output()
    with pytest.raises(BlockingIOError):
        upstream_port.accept()


def test_row_19_a_bad_chunk_after_the_headers_ends_the_request_at_once(
    gateway: GatewayProcess, upstream_port: socket.socket
) -> None:
    """The framing breaks inside a body the gateway is already reading: the request is
    answered 400 now instead of waiting for the rest of a body that cannot come."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f'{CHAT}Transfer-Encoding: chunked\r\n\r\n5\r\n{{"a":\r\n'.encode())
        time.sleep(0.3)  # the request is being handled, its body half read
        started = time.monotonic()
        sock.sendall(f"{CANARY}\r\n".encode())
        reply = read_reply(sock, timeout=5, until_closed=True)

    assert time.monotonic() - started < 2
    assert_refused_in_openai_shape(reply, 400)
    audit = [r for r in gateway.records("audit") if r["status"] == 400]
    assert audit, "the refused request has no audit line"
    assert CANARY not in gateway.output()
    with pytest.raises(BlockingIOError):
        upstream_port.accept()
