"""The upstream connections (`gateway/upstream/http1.py`), against a real HTTP server on
loopback: one connection carries request after request, across a reload (origins built
again, with new headers); an answer not read to its end drops its connection (and a read
still waiting on it fails); a closed answer cannot be read on even when all of it had
arrived (how a shutdown cuts a stream); a read past the attempt's `total` fails with a
timeout; an idle connection past KEEPALIVE_S is not reused, and is closed even when no
request comes; interim answers are skipped, malformed ones are client errors; a header
that would break the request head is refused when the origin is built."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.upstream import http1
from gateway.upstream.http1 import Connections, Origin

BODY = b'{"hello": "upstream"}'


@dataclass
class Server:
    url: str
    # The client port of the connection each request arrived on, in order.
    ports: list[int] = field(default_factory=list)
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    heads: list[CIMultiDict[str]] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    seen = Server(url="")

    async def answer(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.ports.append(peer[1] if peer else -1)
        if request.transport is not None:
            seen.transports.append(request.transport)
        seen.heads.append(CIMultiDict(request.headers))
        body = await request.read()
        if request.query.get("slow"):  # a stream that sends one chunk, then nothing
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first")
            await asyncio.sleep(30)
            return response
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat", answer)
    async with TestServer(app, host="127.0.0.1") as running:
        seen.url = str(running.make_url("/v1/chat"))
        yield seen


async def post(connections: Connections, origin: Origin, *, total: float = 10) -> http1.Response:
    loop = asyncio.get_running_loop()
    return await connections.post(
        origin,
        b"x-request-id: r1\r\n",
        BODY,
        connect_timeout=5,
        idle_timeout=5,
        ends_at=loop.time() + total,
    )


async def test_one_connection_carries_request_after_request(server: Server) -> None:
    connections = Connections()
    origin = Origin.of(server.url, {"Authorization": "Bearer k"})
    for _ in range(5):
        response = await post(connections, origin)
        assert (response.status, await response.content.read()) == (200, BODY)
        response.close()
    await connections.close()

    assert len(server.ports) == 5
    assert len(set(server.ports)) == 1
    head = server.heads[0]
    assert head["Authorization"] == "Bearer k"
    assert head["x-request-id"] == "r1"
    assert head["Content-Length"] == str(len(BODY))
    assert head["Host"] == server.url.split("/")[2]


async def test_an_answer_not_read_to_its_end_drops_its_connection(server: Server) -> None:
    connections = Connections()
    origin = Origin.of(server.url + "?slow=1", {})
    response = await post(connections, origin)
    assert await response.content.readany() == b"first"
    waiting = asyncio.ensure_future(response.content.readany())
    await asyncio.sleep(0.05)
    response.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await asyncio.wait_for(waiting, 5)

    again = await post(connections, Origin.of(server.url, {}))
    await again.content.read()
    again.close()
    await connections.close()
    assert len(set(server.ports)) == 2  # a new connection for the second request


async def test_a_read_past_the_total_fails_with_a_timeout(server: Server) -> None:
    connections = Connections()
    response = await post(connections, Origin.of(server.url + "?slow=1", {}), total=0.3)
    assert await response.content.readany() == b"first"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(response.content.readany(), 5)
    response.close()
    await connections.close()


async def test_an_idle_connection_past_the_keepalive_is_not_reused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_S", 0.1)
    connections = Connections()
    origin = Origin.of(server.url, {})
    for _ in range(2):
        response = await post(connections, origin)
        await response.content.read()
        response.close()
        await asyncio.sleep(0.2)
    await connections.close()
    assert len(set(server.ports)) == 2


@pytest.mark.parametrize("value", ["key\n", "key\r\nx-injected: 1", "a\0b"])
def test_a_header_that_would_break_the_head_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        Origin.of("http://127.0.0.1:9/v1/chat", {"Authorization": value})


async def raw_server(answer: bytes) -> tuple[asyncio.Server, str]:
    """A server that reads one request head, writes `answer` as it is, and closes once the
    client has."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat"


async def test_an_interim_answer_is_skipped_for_the_final_one() -> None:
    server, url = await raw_server(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    connections = Connections()
    async with server:
        response = await post(connections, Origin.of(url, {}))
        assert (response.status, await response.content.read()) == (200, b"ok")
        response.close()
        await connections.close()
        await asyncio.sleep(0.05)  # the server's side closes too


async def test_a_malformed_answer_is_a_client_error_not_a_crash() -> None:
    server, url = await raw_server(b"HTTP/1.1 2x0 Not A Status\r\n\r\n")
    connections = Connections()
    async with server:
        with pytest.raises(aiohttp.ClientError):
            await post(connections, Origin.of(url, {}))
        await connections.close()
        await asyncio.sleep(0.05)


async def test_origins_built_again_reuse_the_connections_with_their_own_headers(
    server: Server,
) -> None:
    connections = Connections()
    for key in ("old", "new"):  # a reload builds its origins again (a new key, say)
        origin = Origin.of(server.url, {"Authorization": f"Bearer {key}"})
        response = await post(connections, origin)
        await response.content.read()
        response.close()
    await connections.close()

    assert len(set(server.ports)) == 1
    assert [h["Authorization"] for h in server.heads] == ["Bearer old", "Bearer new"]
    https = [Origin.of("https://example.test/v1", {"k": v}) for v in ("1", "2")]
    assert https[0] == https[1] and hash(https[0]) == hash(https[1])


async def test_a_closed_answer_cannot_be_read_on_even_when_all_of_it_arrived(
    server: Server,
) -> None:
    connections = Connections()
    response = await post(connections, Origin.of(server.url, {}))
    await asyncio.sleep(0.05)  # all of it arrives, unread
    response.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await response.content.read()
    await connections.close()


async def test_idle_connections_are_closed_after_the_keepalive_without_a_request(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_S", 0.1)
    connections = Connections()
    origin = Origin.of(server.url, {})
    responses = await asyncio.gather(*(post(connections, origin) for _ in range(3)))
    for response in responses:
        await response.content.read()
        response.close()
    await asyncio.sleep(0.35)

    assert len(set(server.ports)) == 3
    assert all(transport.is_closing() for transport in server.transports)
    await connections.close()
