"""Client connections: aiohttp's HTTP/1.1 connection (`RequestHandler`) with what it leaves
open to a hostile client closed, and the server and runner that use it (`server.py` runs
them).

- a header deadline (`server.header_timeout_s`, from the connection's opening or a later
  request's first byte): a client that trickles its headers (slowloris) gets 408 and is
  closed; one that sent nothing is closed;
- a body deadline (`server.body_timeout_s`, from the headers): the request is answered 408
  like any refusal (the stages see the read fail), then the connection closed; a body whose
  chunked framing breaks fails at once with 400 instead of waiting;
- a cap on the connections of the process (`server.max_connections`): one more is answered
  503 in the OpenAI shape, with `Retry-After`, and closed, so that a flood of idle sockets
  cannot use up the file descriptors the upstream calls need;
- aiohttp's own answers to malformed HTTP (its parser's 400s): in the OpenAI shape (400,
  414, 431), neither quoting nor logging what the client sent (it may be an
  `Authorization` value), the connection closed.

The keep-alive timeout is aiohttp's own (`server.keepalive_timeout_s`). Refusing compressed
request bodies is the middleware's (app.py): it needs a parsed request.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from typing import Any, cast

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge
from structlog.typing import FilteringBoundLogger

from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    InternalError,
    InvalidRequest,
    RequestLineTooLong,
    RequestTimeout,
    TooManyConnections,
)
from gateway.observability.logs import where_it_failed
from gateway.observability.metrics import PREFIX
from gateway.pipeline import error_response

# The `Server` header of every answer: no Python or aiohttp version for scanners to match.
SERVER_NAME = "llm-gateway"
# Longest request line and header line the parser accepts. They differ so that a line that
# is too long can be told apart (414 for the request line, 431 for a header).
MAX_REQUEST_LINE = 8190
MAX_HEADER_LINE = 16 * 1024
# File descriptors kept for what is neither a client nor an upstream connection: the
# listening socket, Redis, log files, the event loop's own.
RESERVED_FDS = 64
# Seconds a client connection over the cap is told to wait.
RETRY_AFTER_S = 1
# A connection over the cap is answered once its request arrived, or after this long; at
# most this many wait at once (each holds a file descriptor while it waits).
OVER_CAPACITY_WAIT_S = 1.0
MAX_WAITING_REFUSALS = RESERVED_FDS // 2
# Dropped connections are counted always, logged at most once per interval: a flood must
# not become a flood of log lines.
DROP_LOG_INTERVAL_S = 10.0
# What aiohttp's parser says when a request has more than max_headers headers.
_TOO_MANY_HEADERS = "Too many headers received"
_NOT_HTTP = "The request is not valid HTTP/1.1 and was not read."
INVALID_HTTP = "invalid_http_request"


class RawAnswer:
    """An OpenAI-shaped error as the bytes of a whole HTTP/1.1 response that closes the
    connection, for answers given before aiohttp has a request to answer (a connection over
    the cap, a header timeout). Built once; each answer only adds its request id."""

    def __init__(self, error: GatewayError, reason: str) -> None:
        body = error.body_bytes()
        headers = {
            **error.headers,
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
            "Server": SERVER_NAME,
        }
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._head = f"HTTP/1.1 {error.status} {reason}\r\n{lines}x-request-id: ".encode()
        self._tail = b"\r\n\r\n" + body

    def bytes(self) -> bytes:
        return self._head + secrets.token_hex(16).encode() + self._tail


class ConnectionGuard:
    """What all client connections of the process share: the cap and the count of open
    connections, the timeouts, the prepared answers, and the count of connections dropped
    (over the cap, a timeout, malformed HTTP)."""

    REASONS = ("over_capacity", "header_timeout", "body_timeout", "malformed_request")

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout_s: float,
        body_timeout_s: float,
        log: FilteringBoundLogger,
        registry: CollectorRegistry,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.open = 0
        self.waiting_refusals = 0
        self.log = log
        self.over_capacity = RawAnswer(
            TooManyConnections(
                "The gateway has too many open connections; retry shortly.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ),
            "Service Unavailable",
        )
        self.header_late = RawAnswer(
            RequestTimeout(
                f"The request headers were not complete within {header_timeout_s:g} seconds."
            ),
            "Request Timeout",
        )
        Gauge(
            f"{PREFIX}_connections_open",
            "Client connections open now.",
            registry=registry,
        ).set_function(lambda: self.open)
        dropped = Counter(
            f"{PREFIX}_connections_dropped",
            "Client connections the gateway closed on its own, by reason: over_capacity "
            "(server.max_connections), header_timeout, body_timeout, malformed_request.",
            ["reason"],
            registry=registry,
        )
        self._dropped = {reason: dropped.labels(reason) for reason in self.REASONS}
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._next_log = 0.0

    def body_late(self) -> RequestTimeout:
        return RequestTimeout(
            f"The request body was not complete within {self.body_timeout_s:g} seconds."
        )

    def dropped(self, reason: str, now: float) -> None:
        self._dropped[reason].inc()
        self._unlogged[reason] += 1
        if now >= self._next_log:
            self._next_log = now + DROP_LOG_INTERVAL_S
            self.log.warning(
                "connections_dropped",
                **self._unlogged,
                open=self.open,
                max_connections=self.max_connections,
            )
            self._unlogged.clear()


class GatewayProtocol(RequestHandler):
    """aiohttp's HTTP/1.1 connection, plus deadlines for a request's headers and body and
    OpenAI-shaped answers to malformed requests (see the module docstring)."""

    __slots__ = (
        "_admitted",
        "_body",
        "_body_timer",
        "_guard",
        "_header_bytes",
        "_header_timer",
    )

    def __init__(self, manager: GatewayServer, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        # Counted in the guard's `open` from its creation (see GatewayServer) until its
        # connection is lost.
        self._admitted = True
        self._header_timer: asyncio.TimerHandle | None = None
        # Bytes of the request whose headers are awaited have arrived: a timeout answers.
        self._header_bytes = False
        # The body still arriving (at most one: the parser reads no further until it ends).
        self._body: StreamReader | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._guard.open -= 1
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # aiohttp also calls this with b"" to resume parsing: those are not client bytes.
        if self._header_timer is None and data and self._idle():
            # Between requests, and the next one begins: its headers have a deadline.
            self._arm_header_timer()
        # aiohttp counts the requests it parsed on the connection (failures included).
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._parsed()
        elif data:
            if self._header_timer is not None:
                self._header_bytes = True
            if self._body is not None and self._body.is_eof():
                self._cancel_body_timer()

    def _idle(self) -> bool:
        """Waiting for the next request, none queued or being handled."""
        return self._waiter is not None and not self._waiter.done()

    def _parsed(self) -> None:
        """aiohttp parsed one or more requests (or failed to): the headers are in; the last
        one's body may still be arriving."""
        self._cancel_header_timer()
        message, payload = self._messages[-1]
        if not isinstance(message, RawRequestMessage):
            # The parser failed. Inside a body still arriving (a bad chunk), its request
            # would wait for the rest forever: it fails now, like the parser.
            self._fail_body(InvalidRequest(_NOT_HTTP, code=INVALID_HTTP), "malformed_request")
            return
        self._cancel_body_timer()
        if not payload.is_eof():
            self._body = payload
            self._body_timer = self._loop.call_later(self._guard.body_timeout_s, self._body_late)

    def _arm_header_timer(self) -> None:
        self._header_bytes = False
        self._header_timer = self._loop.call_later(
            self._guard.header_timeout_s, self._header_timeout
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        self._body = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is None or not self._idle():
            return  # closed already, or busy with a request (keep-alive covers the rest)
        if self._header_bytes:  # a request began: say why it ends
            self.transport.write(self._guard.header_late.bytes())
        self._guard.dropped("header_timeout", self._loop.time())
        self.force_close()

    def _body_late(self) -> None:
        self._body_timer = None
        self._fail_body(self._guard.body_late(), "body_timeout")

    def _fail_body(self, error: GatewayError, reason: str) -> None:
        """Ends the body still arriving with `error`: its request, reading it, is answered
        with the error (and audited) like any refusal; the connection then closes."""
        body = self._body
        self._cancel_body_timer()
        if body is None or body.is_eof() or self.transport is None:
            return
        self._guard.dropped(reason, self._loop.time())
        queued = any(payload is body for _, payload in self._messages)
        if not (queued or self._request_in_progress):
            self.force_close()  # answered already: aiohttp is only draining the body
            return
        body.set_exception(error)
        # Nothing more is read: aiohttp closes the connection after the answer instead of
        # draining the rest of the body.
        self._lingering_time = 0.0

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request its parser refused (or, for a bug, to an error
        that escaped the middleware): the OpenAI shape. aiohttp's own quotes the offending
        bytes and logs them with a traceback; `message` and `exc` are never shown here."""
        if request.writer.output_size > 0:
            # Same as aiohttp: the answer has begun, only closing the connection is left.
            raise ConnectionError("the response has started; cannot answer an error")
        error = self._error_for(status, exc)
        if status >= 500:
            self._guard.log.error(
                "internal_error",
                where=where_it_failed(exc) if exc is not None else f"HTTP {status}",
            )
        else:
            self._guard.dropped("malformed_request", self._loop.time())
        response = error_response(error)
        response.headers["Server"] = SERVER_NAME
        response.headers["x-request-id"] = secrets.token_hex(16)
        response.force_close()
        return response

    def _error_for(self, status: int, exc: BaseException | None) -> GatewayError:
        if status >= 500:
            return InternalError("The gateway failed on its own; this is a bug.")
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if str(limit) == str(self.max_line_size):
                return RequestLineTooLong(
                    f"The request line is longer than {self.max_line_size} bytes."
                )
            return HeadersTooLarge(f"A request header is longer than {self.max_field_size} bytes.")
        if isinstance(exc, BadHttpMessage) and exc.message == _TOO_MANY_HEADERS:
            return HeadersTooLarge(f"The request has more than {self.max_headers} headers.")
        return InvalidRequest(_NOT_HTTP, code=INVALID_HTTP)


class OverCapacity(asyncio.Protocol):
    """A connection over `server.max_connections`: answered 503 in the OpenAI shape, with
    `Retry-After`, and closed. The answer waits for the request to arrive (at most
    OVER_CAPACITY_WAIT_S): closing a socket with an unread request in it sends a reset,
    which makes clients that read only after writing (httpx, so the openai SDK) lose the
    answer. Only a few connections wait at once; the others are answered at once."""

    __slots__ = ("_guard", "_timer", "_transport")

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        guard = self._guard
        if guard.waiting_refusals >= MAX_WAITING_REFUSALS:
            self._answer()
            return
        guard.waiting_refusals += 1
        self._timer = asyncio.get_running_loop().call_later(OVER_CAPACITY_WAIT_S, self._answer)

    def data_received(self, data: bytes) -> None:
        self._answer()

    def eof_received(self) -> bool:
        self._answer()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_waiting()
        self._transport = None

    def _answer(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._stop_waiting()
        transport.write(self._guard.over_capacity.bytes())
        transport.close()
        self._guard.dropped("over_capacity", asyncio.get_running_loop().time())

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._guard.waiting_refusals -= 1


class GatewayServer(web.Server):
    """aiohttp's server whose connections are `GatewayProtocol`s sharing one guard."""

    def __init__(self, handler: Any, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard

    # The event loop needs only an asyncio.Protocol: a connection over the cap gets none of
    # aiohttp's machinery (aiohttp's signature says RequestHandler).
    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        guard = self.guard
        # Counted here, not when the connection is made: the loop may accept a burst of
        # connections (create their protocols) before it tells any of them it is made.
        if guard.open >= guard.max_connections:
            return OverCapacity(guard)
        guard.open += 1
        return GatewayProtocol(self, guard, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """aiohttp's app runner, serving through a `GatewayServer`."""

    __slots__ = ("_guard",)

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        # aiohttp's own server, built from the app (startup, handler arguments); then the
        # same, with our connection class.
        plain = await super()._make_server()
        return GatewayServer(
            plain.request_handler,
            guard=self._guard,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **plain._kwargs,
        )
