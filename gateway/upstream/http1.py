"""HTTP/1.1 to the upstreams: keep-alive connections per origin, a request written as one
buffer, the answer read by aiohttp's own client protocol and parser (`ResponseHandler`,
on the C llhttp parser where aiohttp has it built).

Owns the connections (idle ones kept per origin, most recently used first, dropped after
`KEEPALIVE_S` unused or when the upstream closes them) and the bytes of a request. What it
leaves out of `aiohttp.ClientSession` is the per-request machinery the gateway never uses:
URL parsing and building, the cookie jar, redirects, proxies, authentication helpers,
tracing, header merging and a timer per request. The gateway's upstream call is a POST of a
body it built to a URL fixed by the configuration, with headers fixed by the configuration
plus the request id, so the head is built once per upstream and the request is one write.
Measured on this machine: about 100 µs less CPU per request than `ClientSession.post`
(a loop of requests to nginx; the gateway's before and after are in
bench/results/before-after/); the parser, the flow control of the answer (`StreamReader`) and the
exceptions a broken or slow answer raises are aiohttp's, as before. `ResponseHandler` is
not aiohttp's public API: pyproject.toml pins the minor release these tests ran on.

Timeouts: `connect` (TCP and TLS); `idle`, the longest silence while waiting for the head
once the request is written and between any two reads of the body (aiohttp's `sock_read`);
`ends_at`, the end of the attempt's `total`, after which a body still being read fails with
a timeout. The caller bounds the wait for the head (`first_byte`) itself.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp.client_exceptions import ClientConnectionError, ClientError, ServerTimeoutError
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

# An idle connection older than this is closed rather than reused: below the keep-alive
# timeouts of the usual servers (nginx 75 s, aiohttp 75 s, Node 5 s is the exception), the
# same as aiohttp's connector, whose behaviour this keeps.
KEEPALIVE_S = 15.0
# The answer's buffer before reading from the socket pauses (aiohttp's default).
_READ_BUFSIZE = 2**16


class ConnectTimeout(TimeoutError):
    """The connection (TCP and TLS) was not made within the `connect` timeout."""


class MalformedResponse(ClientError):
    """The upstream's answer is not HTTP/1.1 the parser accepts (its status line or
    headers)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream's requests go, and the start of each request's head. Two origins
    are equal when their connections are interchangeable (scheme, host, port and the CA
    trusted): a reload, which builds new origins (new keys in the head, new TLS contexts),
    keeps using the connections the old ones opened."""

    host: str
    port: int
    https: bool
    ca_file: str | None
    tls: ssl.SSLContext | None = field(compare=False)
    head: bytes = field(compare=False)

    @classmethod
    def of(cls, url: str, headers: dict[str, str], ca_file: str | None = None) -> Origin:
        """The origin of `url` (http or https), sending `headers` with every request and
        trusting `ca_file` (or the system's CAs) for https. Raises ValueError for a header
        that would break the head (a line break in a key read from the environment, say)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream URL must be http:// or https:// with a host")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        host = parts.hostname
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{port}"
        lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
        lines.append(f"Host: {netloc}")
        # What aiohttp's session sent: an upstream may compress, the parser decompresses.
        lines.append("Accept-Encoding: gzip, deflate")
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0") or ":" in name:
                raise ValueError(f"the {name!r} header of an upstream holds a line break")
            lines.append(f"{name}: {value}")
        context = ssl.create_default_context(cafile=ca_file) if https else None
        head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return cls(host, port, https, ca_file, context, head)


class Response:
    """An upstream's answer whose head has arrived: its status, headers and body
    (`content`, an aiohttp StreamReader). `close()` once done with it: the connection is
    kept for the next request if the body was read to its end, else dropped; either way a
    read of the body from then on fails (a shutdown cuts a stream by closing it, even one
    whose last bytes have arrived)."""

    __slots__ = ("_connections", "_expiry", "_origin", "_protocol", "content", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        protocol: ResponseHandler,
        connections: Connections,
        origin: Origin,
        ends_at: float,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self._protocol: ResponseHandler | None = protocol
        self._connections = connections
        self._origin = origin
        self._expiry = asyncio.get_running_loop().call_at(ends_at, self._expire)

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        self._expiry.cancel()
        reusable = self.content.is_eof() and not protocol.should_close
        if self.content.exception() is None:
            set_exception(self.content, ClientConnectionError("Connection closed"))
        if reusable:
            self._connections.keep(self._origin, protocol)
        else:
            # Aborted, not closed: a close would wait to flush a request body the
            # upstream may never read. The reset is also what tells the upstream to stop
            # generating.
            protocol.abort()

    def _expire(self) -> None:
        # The attempt's `total` ran out: a read of the body fails from now on.
        set_exception(self.content, ServerTimeoutError("The upstream answer took too long."))


class Connections:
    """The process's connections to the upstreams, kept alive between requests; shared by
    every configuration generation (a reload keeps them). Idle ones are reused most recent
    first and closed once unused for KEEPALIVE_S (checked when one is kept, and by a sweep
    every KEEPALIVE_S while any is idle)."""

    def __init__(self) -> None:
        self._idle: dict[Origin, deque[tuple[float, ResponseHandler]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    async def post(
        self,
        origin: Origin,
        extra_head: bytes,
        body: bytes,
        *,
        connect_timeout: float,
        idle_timeout: float,
        ends_at: float,
    ) -> Response:
        """Sends a POST with `body` (`extra_head`: more header lines, each ending in CRLF)
        and returns once the final answer's head has arrived. Raises ConnectTimeout,
        OSError (refused, reset, TLS), or aiohttp's ClientError (MalformedResponse
        included) or ServerTimeoutError (`idle`)."""
        if self.closed:
            raise ClientConnectionError("The upstream connections are closed.")
        loop = asyncio.get_running_loop()
        protocol = self._reusable(origin)
        if protocol is None:
            try:
                async with asyncio.timeout(connect_timeout):
                    _, protocol = await loop.create_connection(
                        lambda: ResponseHandler(loop), origin.host, origin.port, ssl=origin.tls
                    )
            except TimeoutError:
                raise ConnectTimeout from None
        # read_until_eof: an answer with neither a length nor chunks ends when the upstream
        # closes, as aiohttp's session reads it.
        protocol.set_response_params(
            read_timeout=idle_timeout, read_bufsize=_READ_BUFSIZE, read_until_eof=True
        )
        assert protocol.transport is not None
        try:
            protocol.transport.write(
                b"%s%sContent-Length: %d\r\n\r\n%s" % (origin.head, extra_head, len(body), body)
            )
            protocol.start_timeout()
            message, content = await protocol.read()
            # Interim answers (103 Early Hints, say) precede the one that counts; a switch
            # of protocols (101) was never asked for.
            while 100 <= message.code < 200 and message.code != 101:
                message, content = await protocol.read()
            if message.code == 101:
                raise MalformedResponse
        except HttpProcessingError:
            protocol.abort()
            raise MalformedResponse from None
        except BaseException:
            protocol.abort()
            raise
        return Response(message.code, message.headers, content, protocol, self, origin, ends_at)

    def keep(self, origin: Origin, protocol: ResponseHandler) -> None:
        """Keeps a connection whose answer was read to its end for the next request."""
        if self.closed or not protocol.is_connected():
            protocol.abort()
            return
        protocol.read_timeout = None
        protocol.start_timeout()  # with no read timeout: cancels the running one
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        now = time.monotonic()
        _close_older(idle, now - KEEPALIVE_S)
        idle.append((now, protocol))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._swept)

    def _reusable(self, origin: Origin) -> ResponseHandler | None:
        """The most recently used idle connection to `origin` still open and young enough."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        _close_older(idle, time.monotonic() - KEEPALIVE_S)
        while idle:
            protocol = idle.pop()[1]
            if protocol.is_connected() and not protocol.should_close:
                return protocol
            protocol.abort()
        return None

    def _swept(self) -> None:
        self._sweep = None
        oldest = time.monotonic() - KEEPALIVE_S
        for origin, idle in list(self._idle.items()):
            _close_older(idle, oldest)
            if not idle:
                del self._idle[origin]
        if self._idle:
            self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._swept)

    async def close(self) -> None:
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            while idle:
                idle.pop()[1].close()
        self._idle.clear()


def _close_older(idle: deque[tuple[float, ResponseHandler]], oldest: float) -> None:
    """Closes the connections idle since before `oldest` (the deque is oldest first)."""
    while idle and idle[0][0] < oldest:
        idle.popleft()[1].close()
