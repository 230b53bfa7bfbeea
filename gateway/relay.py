"""Relay stage: the upstream's answer to the client.

Whole answers go out as the upstream (or its dialect's translation) produced them. Streams
are forwarded event by event as each arrives, never buffered whole; the client's response
starts only once the upstream's first event is in (until then a failure can still be
retried elsewhere). A stream that the upstream cuts, reports an error in, stalls past the
idle timeout or overflows ends with an OpenAI-shaped error event and no `[DONE]`, so a
client can tell a cut answer from a complete one.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from pydantic_core import from_json

from gateway.accounting import usage_of
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.upstream.client import JsonAnswer, StreamAnswer
from gateway.upstream.sse import EventTooLarge, error_event, is_done

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    "X-Accel-Buffering": "no",
}


def relay_json(answer: JsonAnswer, ctx: RequestContext) -> web.Response:
    ctx.usage = answer.usage
    return web.Response(body=answer.body, status=200, headers=_JSON_HEADERS)


async def relay_stream(
    request: web.Request,
    answer: StreamAnswer,
    ctx: RequestContext,
    client_wants_usage: bool,
) -> web.StreamResponse:
    """Relay an SSE stream. The gateway always asks upstreams for a final usage chunk (to
    charge tokens exactly); it reaches the client only if the client asked for it too."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await response.prepare(request)
    ctx.first_byte = ctx.elapsed_ms()
    try:
        if not await _forward_events(answer, response, ctx, client_wants_usage):
            ctx.outcome = "upstream_cut"
    except ConnectionResetError:
        # The client left while an event was being written: nothing more to say to it.
        ctx.outcome = "client_aborted"
        return response
    await response.write_eof()
    return response


async def _forward_events(
    answer: StreamAnswer,
    response: web.StreamResponse,
    ctx: RequestContext,
    client_wants_usage: bool,
) -> bool:
    """Relays events until [DONE] (returns True) or a failure, which ends the stream with
    an error event and no [DONE] (returns False)."""
    try:
        if await _forward(answer.first, response, ctx, client_wants_usage):
            return True
        async for event in answer.rest:
            if await _forward(event, response, ctx, client_wants_usage):
                return True
        failure = error_event("The upstream ended the stream early.", "upstream_error")
    except ConnectionResetError:
        raise  # the client's side, not the upstream's (aiohttp's subclasses ClientError)
    except GatewayError as error:  # reported by the upstream inside the stream
        if ctx.hipaa:
            error = error.withheld()
        failure = error_event(error.message, error.code or "upstream_error", error.error_type)
    except EventTooLarge:
        failure = error_event("The upstream sent an event larger than allowed.", "upstream_error")
    except TimeoutError:
        failure = error_event("The upstream stopped sending in time.", "upstream_timeout")
    except aiohttp.ClientError:
        failure = error_event("The upstream connection broke mid-stream.", "upstream_error")
    await response.write(failure)
    return False


async def _forward(
    event: bytes, response: web.StreamResponse, ctx: RequestContext, client_wants_usage: bool
) -> bool:
    """Writes one event; True when it was the stream's [DONE]."""
    if is_done(event):
        await response.write(event)
        return True
    if b'"usage"' in event and _note_usage(event, ctx) and not client_wants_usage:
        return False
    if event.startswith(b"data:"):
        ctx.content_events += 1
    await response.write(event)
    return False


def _note_usage(event: bytes, ctx: RequestContext) -> bool:
    """Records the usage an event carries; True when the event is only a usage chunk."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                chunk = from_json(line[5:])
            except ValueError:
                return False
            if not isinstance(chunk, dict) or (usage := usage_of(chunk)) is None:
                return False
            ctx.usage = usage
            return chunk.get("choices") == []
    return False
