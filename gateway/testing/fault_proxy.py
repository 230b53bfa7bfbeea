"""A TCP proxy on loopback that plays network faults between a client (the gateway) and a
server (Redis, an upstream), switchable while traffic flows: latency each way, connections
reset, a blackhole, a throughput cap. The project's own stand-in for Toxiproxy, which is not
installable here; tests put it in front of a real server and switch faults at run time.

Bytes keep their order and arrive late rather than never, as on a real network: what a
client sent before it gave up and closed its side is still delivered to the server, after
the delay. That is how an abandoned Redis call still runs on Redis, later.

- `delay(seconds, to_server=..., to_client=...)`: every chunk read from then on is
  delivered `seconds` later in that direction (chunks already queued keep their time).
- `reset()`: open connections are aborted with a TCP RST, and so is every new one until
  `heal()`.
- `blackhole()`: connections are accepted and kept open, every byte is swallowed.
- `throttle(bytes_per_s)`: each direction of each connection delivers at most that rate.
- `heal()`: no fault at all.

`accepted` counts the connections accepted so far, `open` those still being relayed (a
test can tell that a client hung up: the count drops once both sides are closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Any

_CHUNK = 65536


@dataclass(slots=True)
class Faults:
    to_server_delay_s: float = 0.0
    to_client_delay_s: float = 0.0
    reset: bool = False
    blackhole: bool = False
    bytes_per_s: float | None = None


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.faults = Faults()
        # Connections accepted so far (a test can tell whether a client reconnected).
        self.accepted = 0
        # Connections accepted and not yet closed on both sides.
        self.open = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def delay(self, seconds: float, *, to_server: bool = True, to_client: bool = True) -> None:
        if to_server:
            self.faults.to_server_delay_s = seconds
        if to_client:
            self.faults.to_client_delay_s = seconds

    def reset(self) -> None:
        self.faults.reset = True
        for writer in list(self._writers):
            _abort_with_rst(writer)

    def blackhole(self) -> None:
        self.faults.blackhole = True

    def throttle(self, bytes_per_s: float | None) -> None:
        self.faults.bytes_per_s = bytes_per_s

    def heal(self) -> None:
        self.faults = Faults()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        self.open += 1
        try:
            if self.faults.reset:
                _abort_with_rst(writer)
                return
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _abort_with_rst(writer)
                return
            self._writers |= {writer, server_writer}
            try:
                await asyncio.gather(
                    self._pipe(reader, server_writer, to_server=True),
                    self._pipe(server_reader, writer, to_server=False),
                )
            finally:
                self._writers -= {writer, server_writer}
                server_writer.transport.abort()
        except asyncio.CancelledError:
            pass  # close() ends every connection; asyncio's stream callback must not see it
        finally:
            writer.transport.abort()
            self._handlers.discard(task)
            self.open -= 1

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool
    ) -> None:
        """Copies one direction, each chunk due `delay` after it was read; the end of the
        stream is passed on after the data before it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        def due() -> float:
            faults = self.faults
            delay = faults.to_server_delay_s if to_server else faults.to_client_delay_s
            return loop.time() + delay

        async def read() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    if not self.faults.blackhole:
                        queue.put_nowait((due(), data))
            except OSError:
                pass
            queue.put_nowait((due(), b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                at, data = await queue.get()
                if (wait := at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                await self._deliver(writer, data)
        except OSError:
            return  # the receiving side is gone; nothing more can be delivered
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _deliver(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        rate = self.faults.bytes_per_s
        if rate is None:
            writer.write(data)
            await writer.drain()
            return
        step = max(1, int(rate / 50))  # about 50 writes a second at the capped rate
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(len(piece) / rate)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close so the peer sees ECONNRESET, as when a middlebox or a crashed host resets."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
