"""Fault matrix row 23, slow headers (slowloris): connections that trickle their request
headers a byte at a time are answered 408 and closed once `server.header_timeout_s` has
passed since they opened, while a normal client is served throughout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.gateway_process import gateway_process

SLOW_CLIENTS = 300
HEADER_TIMEOUT_S = 1.0
MARGIN_S = 3.0  # a loaded machine is slow to schedule: closing in time is the claim


async def slow_client(port: int) -> tuple[float | None, bytes]:
    """Sends a request head without its end, then one more header byte every 0.2 s; returns
    when the gateway closed the connection (seconds after opening it) and what it sent."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    received = b""
    try:
        while time.monotonic() - opened < HEADER_TIMEOUT_S + MARGIN_S:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                writer.write(b"a")
                continue
            if not chunk:
                return time.monotonic() - opened, received
            received += chunk
    except ConnectionError:
        return time.monotonic() - opened, received
    finally:
        writer.close()
    return None, received


async def test_row_23_slowloris_connections_are_answered_408_and_closed(tmp_path: Path) -> None:
    with gateway_process(tmp_path, header_timeout_s=HEADER_TIMEOUT_S) as gateway:
        normal: list[int] = []
        done = asyncio.Event()

        async def normal_client() -> None:
            async with aiohttp.ClientSession() as session:
                while not done.is_set():
                    async with session.get(f"{gateway.url}/healthz") as resp:
                        normal.append(resp.status)
                    await asyncio.sleep(0.1)

        other = asyncio.create_task(normal_client())
        results = await asyncio.gather(*(slow_client(gateway.port) for _ in range(SLOW_CLIENTS)))
        done.set()
        await other

    still_open = [r for r in results if r[0] is None]
    assert not still_open, f"{len(still_open)} of {SLOW_CLIENTS} slow connections stayed open"
    for _, answer in results:
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b'"code":"request_timeout"' in answer
    # Served throughout: about one request every 0.1 s for the slow clients' ~1 s.
    assert len(normal) >= 5
    assert set(normal) == {200}
