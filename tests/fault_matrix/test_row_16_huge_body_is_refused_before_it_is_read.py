"""Fault matrix row 16: a body over `server.max_body_bytes` is answered 413 before it has
all arrived, announced (Content-Length) or not (chunked), and the process does not hold
it: its memory stays flat however much is sent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEAM_KEY
from tests.gateway_process import GatewayProcess, gateway_process, read_reply

MIB = 1 << 20
HEAD = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    f"Authorization: Bearer {TEAM_KEY}\r\n"
)


def rss_bytes(gateway: GatewayProcess) -> int:
    status = Path(f"/proc/{gateway.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(tmp_path_factory.mktemp("row16")) as running:
        yield running


def test_row_16_an_announced_huge_body_is_refused_before_it_is_sent(
    gateway: GatewayProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"{HEAD}Content-Length: {10 * MIB}\r\n\r\n{{".encode())
        reply = read_reply(sock, timeout=5)  # nothing more of the 10 MiB is sent

    assert reply.status == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_row_16_huge_bodies_leave_memory_flat(gateway: GatewayProcess) -> None:
    """Ten bodies of 10 MiB each, half announced, half chunked: 100 MiB sent, none kept."""
    before = rss_bytes(gateway)
    statuses = []
    for i in range(10):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            chunked = i % 2 == 1
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {10 * MIB}"
            sock.sendall(f"{HEAD}{framing}\r\n\r\n".encode())
            piece = b'{"user": "' + b"x" * (MIB - 11)
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece

            def send_all(sock: socket.socket = sock, frame: bytes = frame) -> None:
                try:
                    for _ in range(10):
                        sock.sendall(frame)
                except OSError:
                    pass  # the gateway may close once it has answered

            sender = threading.Thread(target=send_all)
            sender.start()
            statuses.append(read_reply(sock, timeout=10).status)
            sock.shutdown(socket.SHUT_RDWR)
            sender.join(timeout=10)
    grown = rss_bytes(gateway) - before

    assert statuses == [413] * 10
    assert grown < 20 * MIB, f"the gateway grew by {grown / MIB:.1f} MiB"
