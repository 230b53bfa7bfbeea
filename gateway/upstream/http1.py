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
(scripts in `bench/`); the parser, the flow control of the answer (`StreamReader`) and the
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
from dataclasses import dataclass
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
    """Where an upstream's requests go, and the start of each request's head."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    head: bytes

    @classmethod
    def of(cls, url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None) -> Origin:
        """The origin of `url` (http or https), sending `headers` with every request.
        Raises ValueError for a header that would break the head (a line break in a key
        read from the environment, say)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream URL must be http:// or https:// with a host")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
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
        context = (ssl_context or ssl.create_default_context()) if tls else None
        return cls(host, port, context, ("\r\n".join(lines) + "\r\n").encode("latin-1"))


class Response:
    """An upstream's answer whose head has arrived: its status, headers and body
    (`content`, an aiohttp StreamReader). `close()` once done with it: the connection is
    kept for the next request if the body was read to its end, else dropped."""

    __slots__ = ("_expiry", "_idle", "_protocol", "content", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        protocol: ResponseHandler,
        idle: deque[tuple[float, ResponseHandler]],
        ends_at: float,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self._protocol: ResponseHandler | None = protocol
        self._idle = idle
        self._expiry = asyncio.get_running_loop().call_at(ends_at, self._expire)

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        self._expiry.cancel()
        if self.content.is_eof() and not protocol.should_close and protocol.is_connected():
            protocol.read_timeout = None
            protocol.start_timeout()  # with no read timeout: cancels the running one
            self._idle.append((time.monotonic(), protocol))
        else:
            # Dropping an unfinished answer's connection is what tells the upstream to
            # stop generating. A read still waiting on the body fails (as with aiohttp's
            # own response): the protocol lets go of the body when it closes.
            if not self.content.is_eof():
                set_exception(self.content, ClientConnectionError("Connection closed"))
            protocol.close()

    def _expire(self) -> None:
        # The attempt's `total` ran out: a read of the body fails from now on.
        set_exception(self.content, ServerTimeoutError("The upstream answer took too long."))


class Connections:
    """The process's connections to the upstreams, kept alive between requests; shared by
    every configuration generation (a reload keeps them)."""

    def __init__(self) -> None:
        self._idle: dict[Origin, deque[tuple[float, ResponseHandler]]] = {}
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
        loop = asyncio.get_running_loop()
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        protocol = _reusable(idle)
        if protocol is None:
            try:
                async with asyncio.timeout(connect_timeout):
                    _, protocol = await loop.create_connection(
                        lambda: ResponseHandler(loop),
                        origin.host,
                        origin.port,
                        ssl=origin.tls,
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
            # Interim answers (103 Early Hints, say) precede the one that counts.
            while 100 <= message.code < 200:
                message, content = await protocol.read()
        except HttpProcessingError:
            protocol.close()
            raise MalformedResponse from None
        except BaseException:
            protocol.close()
            raise
        return Response(message.code, message.headers, content, protocol, idle, ends_at)

    async def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop()[1].close()


def _reusable(idle: deque[tuple[float, ResponseHandler]]) -> ResponseHandler | None:
    """The most recently used idle connection still open and young enough; older ones
    (every one below an expired one is older) are closed."""
    now = time.monotonic()
    while idle:
        since, protocol = idle.pop()
        if now - since > KEEPALIVE_S:
            protocol.close()
            while idle:
                idle.pop()[1].close()
            return None
        if protocol.is_connected() and not protocol.should_close:
            return protocol
        protocol.close()
    return None
