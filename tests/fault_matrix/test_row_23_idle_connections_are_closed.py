"""Fault matrix row 23, idle connections: a connection that never sends a request is closed
after `server.header_timeout_s`, silently (no request began, none is answered); a keep-alive
connection idle after its request is closed after `server.keepalive_timeout_s`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.gateway_process import gateway_process

IDLE_CONNECTIONS = 1000
HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 2.0
MARGIN_S = 6.0  # a shared two-core machine: 1,000 connects at once queue in the backlog


async def closed_after(reader: asyncio.StreamReader, opened: float, limit: float) -> float | None:
    """Seconds from `opened` until the server closed the connection, or None if it had not
    by `limit`; reads (and discards) what the server sends."""
    try:
        while True:
            remaining = opened + limit - time.monotonic()
            if remaining <= 0:
                return None
            if not await asyncio.wait_for(reader.read(65536), remaining):
                return time.monotonic() - opened
    except TimeoutError:
        return None
    except ConnectionError:
        return time.monotonic() - opened


async def test_row_23_connections_that_never_send_are_closed(tmp_path: Path) -> None:
    with gateway_process(tmp_path, header_timeout_s=HEADER_TIMEOUT_S) as gateway:

        async def idle() -> tuple[float | None, bytes]:
            opened = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                first = await asyncio.wait_for(reader.read(1), HEADER_TIMEOUT_S + MARGIN_S)
                return time.monotonic() - opened if not first else None, first
            except TimeoutError:
                return None, b""
            finally:
                writer.close()

        results = await asyncio.gather(*(idle() for _ in range(IDLE_CONNECTIONS)))

    still_open = sum(1 for closed, _ in results if closed is None)
    assert still_open == 0, f"{still_open} of {IDLE_CONNECTIONS} idle connections stayed open"
    assert all(first == b"" for _, first in results)  # closed without an answer


async def test_row_23_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    with gateway_process(
        tmp_path, header_timeout_s=HEADER_TIMEOUT_S, keepalive_timeout_s=KEEPALIVE_TIMEOUT_S
    ) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        answered = time.monotonic()
        closed = await closed_after(reader, answered, KEEPALIVE_TIMEOUT_S + MARGIN_S)
        writer.close()

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert closed is not None, "the idle keep-alive connection stayed open"
    # The keep-alive timeout, not the (shorter) header timeout, ends an idle connection.
    assert closed >= KEEPALIVE_TIMEOUT_S - 0.1
