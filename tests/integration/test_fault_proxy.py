"""The fault proxy tests use in front of Redis and upstreams: it relays bytes in order, and
plays latency, resets, a blackhole and a throughput cap that can be switched on and off
while connections are open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.testing.fault_proxy import FaultProxy


class EchoServer:
    """A TCP server that sends every byte back, and keeps what it received."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    running = FaultProxy("127.0.0.1", echo.port)
    await running.start()
    yield running
    await running.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.monotonic()
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    return time.monotonic() - started


async def test_relays_bytes_both_ways_until_a_delay_is_switched_on_and_off(
    proxy: FaultProxy,
) -> None:
    reader, writer = await connect(proxy)

    fast = await round_trip(reader, writer)
    proxy.delay(0.15, to_client=False)
    slow = await round_trip(reader, writer)
    proxy.delay(0.15, to_server=False)  # now 0.15 s each way
    slower = await round_trip(reader, writer)
    proxy.heal()
    healed = await round_trip(reader, writer)
    writer.close()

    assert fast < 0.1 and healed < 0.1
    assert 0.15 <= slow < 0.15 + 0.2
    assert 0.3 <= slower < 0.3 + 0.2


async def test_bytes_sent_before_the_client_closed_still_reach_the_server_late(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.delay(0.2, to_client=False)
    _, writer = await connect(proxy)
    writer.write(b"abandoned")
    await writer.drain()
    writer.close()

    await asyncio.sleep(0.1)
    assert echo.received == b""  # still on its way
    await asyncio.sleep(0.3)
    assert echo.received == b"abandoned"


async def test_reset_aborts_open_and_new_connections_until_healed(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer)

    proxy.reset()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    new_reader, new_writer = await connect(proxy)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await round_trip(new_reader, new_writer)

    proxy.heal()
    healed_reader, healed_writer = await connect(proxy)
    assert await round_trip(healed_reader, healed_writer) < 1
    for w in (writer, new_writer, healed_writer):
        w.close()


async def test_blackhole_swallows_bytes_and_keeps_the_connection_open(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    reader, writer = await connect(proxy)
    proxy.blackhole()

    writer.write(b"lost")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    proxy.heal()
    assert await round_trip(reader, writer) < 1  # the same connection works again
    writer.close()

    assert echo.received == b"ping"


async def test_throttle_caps_the_rate_of_each_direction(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    proxy.throttle(20_000)  # bytes per second

    started = time.monotonic()
    writer.write(b"x" * 10_000)
    await asyncio.wait_for(reader.readexactly(10_000), 10)
    elapsed = time.monotonic() - started
    writer.close()

    # 10 kB at 20 kB/s is 0.5 s each way, and the echo's reply starts before it all arrived.
    assert 0.45 <= elapsed < 3
