"""One attempt at one upstream: the process's upstream connections (`http1`), the
upstream's pre-built request head and timeouts, and the classification of every way the
attempt can fail.

An attempt ends when the answer is safe to commit to: a whole JSON answer read (and
translated) and found to be a chat.completion, or a stream's first event. Until then
nothing has reached the client, so a failure may be retried elsewhere
(`AttemptFailed.retryable`); after it, a stream's failure can only end the stream (see
`relay`). Every event of a stream is checked on its way through (see `shape`).

Timeouts per upstream, for one attempt: `connect`; `first_byte`, the per-try timeout
(Envoy's per_try_timeout), from the attempt's start to the response headers; `idle`, the
longest silence while reading (for the headers once the request is sent, within a whole
answer, before and between stream events); `total`, the attempt including the whole
stream. An attempt also never waits past the deadline its caller gives (what is left of
`retries.deadline_s`). A timeout before the answer is committed is retryable on another
upstream (`AttemptFailed.timed_out`); one cut short by the deadline is not held against
the upstream. A stream's answer carries `idle` and the end of `total` to the relay, which
applies them to the writes to the client, the side this layer cannot see.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from pydantic_core import from_json, to_json

from gateway.accounting import Usage, usage_of
from gateway.config import GatewayConfig, ServerConfig
from gateway.dialects import DIALECTS
from gateway.dialects.base import StreamTranslator
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable, from_upstream
from gateway.routing import UpstreamTarget
from gateway.upstream.http1 import Connections, ConnectTimeout, Origin, Response
from gateway.upstream.pool import ConnectionPool
from gateway.upstream.retry import RETRYABLE_STATUSES, parse_retry_after
from gateway.upstream.shape import MAX_UPSTREAM_MESSAGE, BadEvent, check_event, is_completion
from gateway.upstream.sse import EventTooLarge, is_done, iter_events

# Upstream error bodies are read only this far: enough for any real error message.
_MAX_ERROR_BODY = 64 * 1024
# An error code is an identifier (`context_length_exceeded`, vLLM's `400`): what is not one
# (free text, a quote of the request) is dropped, so that the codes passed on can be
# counted (the audit line, usage reports) and put in spans.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class AttemptFailed(Exception):
    def __init__(
        self,
        error: GatewayError,
        *,
        retryable: bool,
        unhealthy: bool,
        retry_after_s: float | None = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        # Counts against the upstream's passive health (5xx, connection, timeout).
        self.unhealthy = unhealthy
        self.retry_after_s = retry_after_s
        # The gateway stopped waiting (not an upstream's 504): worth another upstream, never
        # the same one, whose second wait would only double the first.
        self.timed_out = timed_out


@dataclass(slots=True)
class JsonAnswer:
    body: bytes
    usage: Usage | None


class StreamAnswer:
    """A stream whose first events have arrived (`first`, a batch: see `sse`); iterate the
    rest, batch by batch, then `close()`.

    It carries the serving upstream's bounds for the side the upstream layer cannot see,
    the writes to the client: `idle`, the longest a write may wait, and `ends_at`
    (event-loop time), when the attempt's `total` runs out, whichever side is waiting."""

    def __init__(
        self,
        first: list[bytes],
        rest: AsyncIterator[list[bytes]],
        response: Response,
        *,
        idle: float,
        ends_at: float,
    ) -> None:
        self.first = first
        self.rest = rest
        self.idle = idle
        self.ends_at = ends_at
        self._response = response
        # Added to by whoever tracks the call (outstanding requests, retry budget).
        self.on_close: list[Callable[[], None]] = []

    def close(self) -> None:
        # An unfinished stream's connection is dropped, which is what tells the upstream
        # to stop generating; a finished one's is kept for the next request.
        self._response.close()
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            callback()


@dataclass(frozen=True, slots=True)
class _Endpoint:
    origin: Origin
    connect: float
    first_byte: float
    idle: float
    total: float


def connection_pools(config: GatewayConfig) -> dict[str, ConnectionPool]:
    """The connections each upstream may have in use (see `pool`): taken by the caller for
    an attempt and held until its answer is read or its stream closed."""
    return {
        name: ConnectionPool(upstream.max_connections, upstream.pool_timeout)
        for name, upstream in config.upstreams.items()
    }


class UpstreamClient:
    """The upstreams of one configuration. The connections and the pools belong to the
    process: a reload builds a new client (new URLs, keys, timeouts) on the same ones."""

    def __init__(
        self,
        config: GatewayConfig,
        connections: Connections,
        pools: dict[str, ConnectionPool] | None = None,
    ) -> None:
        self._connections = connections
        self._server: ServerConfig = config.server
        self._endpoints: dict[str, _Endpoint] = {}
        self.pools = connection_pools(config) if pools is None else pools
        for name, upstream in config.upstreams.items():
            dialect = DIALECTS[upstream.dialect]
            api_key = upstream.api_key_env.value if upstream.api_key_env else None
            headers = {"Content-Type": "application/json", **dialect.headers(api_key)}
            self._endpoints[name] = _Endpoint(
                origin=Origin.of(
                    str(upstream.base_url).rstrip("/") + dialect.path,
                    headers,
                    # The upstream's own CA; None: the system's. Verified either way.
                    str(upstream.ca_file) if upstream.ca_file else None,
                ),
                connect=upstream.timeouts.connect,
                first_byte=upstream.timeouts.first_byte,
                idle=upstream.timeouts.idle,
                total=upstream.timeouts.total,
            )

    @property
    def ready(self) -> bool:
        return not self._connections.closed

    async def attempt(
        self,
        target: UpstreamTarget,
        body: bytes,
        request_id: str,
        public_model: str,
        translator: StreamTranslator | None,
        stream: bool,
        deadline: float,
        trace_headers: bytes = b"",
    ) -> JsonAnswer | StreamAnswer:
        """One attempt, up to an answer safe to commit to; raises AttemptFailed; sent with
        `trace_headers` (header lines) when the request is traced. It waits
        no longer than the upstream's own timeouts allow, nor past `deadline` (event-loop
        time: the end of the whole call's budget). A StreamAnswer owns its open response,
        and the rest of its stream is no longer bound by the deadline (`idle` and `total`
        bound it)."""
        endpoint = self._endpoints[target.upstream_name]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                ends_at = loop.time() + endpoint.total
                response = await self._post(endpoint, body, request_id, trace_headers, ends_at)
                try:
                    if response.status >= 300:
                        raise await _failed_status(response)
                    if stream:
                        first, rest = await self._first_event(response, translator)
                        return StreamAnswer(
                            first, rest, response, idle=endpoint.idle, ends_at=ends_at
                        )
                    answer = await self._whole(response, target, public_model)
                except BaseException:
                    response.close()
                    raise
                response.close()  # read to its end: the connection is kept
                return answer
        except TimeoutError:
            # Only the deadline's expiry arrives here: the upstream's own timeouts are
            # AttemptFailed already. The call ran out of time, which says nothing about
            # the upstream, whose own timeout may be longer: not held against it.
            raise AttemptFailed(
                UpstreamTimeout("The upstream did not answer within the request's deadline."),
                retryable=False,
                unhealthy=False,
                timed_out=True,
            ) from None

    async def _post(
        self,
        endpoint: _Endpoint,
        body: bytes,
        request_id: str,
        trace_headers: bytes,
        ends_at: float,
    ) -> Response:
        try:
            async with asyncio.timeout(endpoint.first_byte):
                return await self._connections.post(
                    endpoint.origin,
                    b"x-request-id: %s\r\n%s" % (request_id.encode(), trace_headers),
                    body,
                    connect_timeout=endpoint.connect,
                    idle_timeout=endpoint.idle,
                    ends_at=ends_at,
                )
        except ConnectTimeout:
            raise _unreachable("The upstream could not be reached in time.") from None
        except ssl.SSLError:
            # Never retried without verification; another upstream may still serve it.
            raise _unreachable("The upstream's TLS certificate was not accepted.") from None
        except TimeoutError:
            raise _timed_out("The upstream did not answer in time.") from None
        except (OSError, aiohttp.ClientError):
            raise _unreachable("The upstream could not be reached.") from None

    async def _whole(
        self, response: Response, target: UpstreamTarget, public_model: str
    ) -> JsonAnswer:
        limit = self._server.max_upstream_body_bytes
        body = bytearray()
        try:
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    raise _bad_answer("The upstream's answer exceeded the gateway's size limit.")
        except TimeoutError:
            raise _timed_out("The upstream stopped sending in time.") from None
        except aiohttp.ClientError:
            raise _unreachable(
                "The upstream connection broke before the answer was complete."
            ) from None
        try:
            parsed = from_json(body)
        except ValueError:
            raise _bad_answer("The upstream sent an answer that is not JSON.") from None
        if not isinstance(parsed, dict):
            raise _bad_answer("The upstream sent an answer that is not a JSON object.")
        try:
            translated = target.dialect.translate_response(parsed, public_model)
        except GatewayError as error:  # an answer the dialect cannot read
            raise AttemptFailed(error, retryable=False, unhealthy=True) from None
        answer = parsed if translated is None else translated
        if not is_completion(answer):
            raise _bad_answer("The upstream's answer is not a valid chat.completion.")
        if translated is not None:
            return JsonAnswer(to_json(translated), usage_of(translated))
        return JsonAnswer(bytes(body), usage_of(parsed))

    async def _first_event(
        self, response: Response, translator: StreamTranslator | None
    ) -> tuple[list[bytes], AsyncIterator[list[bytes]]]:
        events = openai_events(
            iter_events(response.content.iter_any(), self._server.max_event_bytes), translator
        )
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise _unreachable("The upstream ended the stream before any event.") from None
        except GatewayError as error:  # reported inside the stream, before anything was sent
            raise _failed_in_stream(error) from None
        except EventTooLarge:
            raise _bad_answer("The upstream sent an event larger than allowed.") from None
        except BadEvent:
            raise _bad_answer(
                "The upstream sent a stream event that is not a valid chat.completion.chunk."
            ) from None
        except TimeoutError:
            raise _timed_out("The upstream sent nothing in time.") from None
        except aiohttp.ClientError:
            raise _unreachable("The upstream connection broke before the first event.") from None
        return first, events


async def openai_events(
    batches: AsyncIterator[list[bytes]], translator: StreamTranslator | None
) -> AsyncIterator[list[bytes]]:
    """OpenAI chunk events, in non-empty batches as they came: translated, or checked (see
    `shape`) and passed on as they are. Raises the error an event reports (vLLM sends
    `data: {"error": {..., "code": 400}}` in a 200 stream), or BadEvent for an event that is
    not a chunk, once the events before it have been handed on."""
    async for batch in batches:
        out: list[bytes] = []
        try:
            for event in batch:
                if translator is None:
                    if not is_done(event):
                        check_event(event)
                    out.append(event)
                else:
                    out += _translated(translator, event)
        except (GatewayError, BadEvent):
            if out:
                yield out
            raise
        if out:
            yield out


def _translated(translator: StreamTranslator, event: bytes) -> list[bytes]:
    try:
        return translator.feed(event)
    except GatewayError as error:
        # An error the upstream reported names its status; one without a status is the
        # translator's "cannot read this event".
        if error.upstream_status is None:
            raise BadEvent from None
        raise


async def _failed_status(response: Response) -> AttemptFailed:
    status = response.status
    message, param, code = await _upstream_error_fields(response)
    retry_after = response.headers.get("Retry-After")
    error = from_upstream(status, message, param=param, code=code, retry_after=retry_after)
    return _failed_with(error, status, parse_retry_after(retry_after))


def _failed_in_stream(error: GatewayError) -> AttemptFailed:
    """An error event before the stream's first event, judged by the upstream's own status
    as if it had come as the HTTP status (Anthropic's in-stream `overloaded_error` is a
    529, vLLM's `code` an HTTP status), not by the status the client would get: an
    in-stream 500 is no more retried than an HTTP 500. An event the gateway could not read
    names no upstream status and is judged by its own (503)."""
    status = error.upstream_status if error.upstream_status is not None else error.status
    return _failed_with(error, status, None)


def _failed_with(error: GatewayError, status: int, retry_after_s: float | None) -> AttemptFailed:
    return AttemptFailed(
        error,
        retryable=status in RETRYABLE_STATUSES,
        unhealthy=status >= 500,
        retry_after_s=retry_after_s,
    )


def _timed_out(message: str) -> AttemptFailed:
    # A per-try timeout: retried on another upstream if the deadline leaves room for it.
    return AttemptFailed(UpstreamTimeout(message), retryable=True, unhealthy=True, timed_out=True)


def _unreachable(message: str) -> AttemptFailed:
    return AttemptFailed(UpstreamUnavailable(message), retryable=True, unhealthy=True)


def _bad_answer(message: str) -> AttemptFailed:
    return AttemptFailed(UpstreamUnavailable(message), retryable=False, unhealthy=True)


async def _upstream_error_fields(
    response: Response,
) -> tuple[str | None, str | None, str | None]:
    """message, param and code of an OpenAI- or Anthropic-shaped upstream error."""
    try:
        raw = await response.content.read(_MAX_ERROR_BODY)
        parsed = from_json(raw)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None, None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        return error[:MAX_UPSTREAM_MESSAGE], None, None
    if not isinstance(error, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return str(value)[:MAX_UPSTREAM_MESSAGE] if value is not None else None

    code = text("code")
    if code is not None and not _ERROR_CODE.fullmatch(code):
        code = None
    return text("message"), text("param"), code
