"""Relay stage: the upstream's answer to the client.

Non-streamed answers are forwarded byte for byte after a size bound and a JSON check.
Streams are forwarded event by event as each arrives, never buffered whole. A stream that
the upstream cuts, times out or overflows ends with an OpenAI-shaped error event and no
`[DONE]`, so a client can tell a cut answer from a complete one.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from pydantic_core import from_json

from gateway.context import RequestContext, Usage
from gateway.errors import UpstreamUnavailable
from gateway.upstream.sse import EventTooLarge, error_event, is_done, iter_events

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    "X-Accel-Buffering": "no",
}


async def relay_json(
    upstream: aiohttp.ClientResponse, ctx: RequestContext, max_bytes: int
) -> web.Response:
    body = bytearray()
    async for chunk in upstream.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise UpstreamUnavailable("The upstream's answer exceeded the gateway's size limit.")
    try:
        parsed = from_json(body)
    except ValueError:
        raise UpstreamUnavailable("The upstream sent an answer that is not JSON.") from None
    if not isinstance(parsed, dict):
        raise UpstreamUnavailable("The upstream sent an answer that is not a JSON object.")
    ctx.usage = usage_of(parsed)
    return web.Response(body=bytes(body), status=200, headers=_JSON_HEADERS)


async def relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    ctx: RequestContext,
    max_event_bytes: int,
    client_wants_usage: bool,
) -> web.StreamResponse:
    """Relay an SSE stream. The gateway always asks upstreams for a final usage chunk (to
    charge tokens exactly); it reaches the client only if the client asked for it too."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await response.prepare(request)
    try:
        if not await _forward_events(upstream, response, ctx, max_event_bytes, client_wants_usage):
            ctx.outcome = "upstream_cut"
    except ConnectionResetError:
        # The client left while an event was being written: nothing more to say to it.
        ctx.outcome = "client_aborted"
        return response
    await response.write_eof()
    return response


async def _forward_events(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    ctx: RequestContext,
    max_event_bytes: int,
    client_wants_usage: bool,
) -> bool:
    """Relays events until [DONE] (returns True) or a failure, which ends the stream with
    an error event and no [DONE] (returns False)."""
    try:
        async for event in iter_events(upstream.content.iter_any(), max_event_bytes):
            if ctx.first_byte is None:
                ctx.first_byte = ctx.elapsed_ms()
            if is_done(event):
                await response.write(event)
                return True
            if b'"usage"' in event and _note_usage(event, ctx) and not client_wants_usage:
                continue
            if event.startswith(b"data:"):
                ctx.content_events += 1
            await response.write(event)
        failure = error_event("The upstream ended the stream early.", "upstream_error")
    except ConnectionResetError:
        raise  # the client's side, not the upstream's (aiohttp's subclasses ClientError)
    except EventTooLarge:
        failure = error_event("The upstream sent an event larger than allowed.", "upstream_error")
    except TimeoutError:
        failure = error_event("The upstream stopped sending in time.", "upstream_timeout")
    except aiohttp.ClientError:
        failure = error_event("The upstream connection broke mid-stream.", "upstream_error")
    await response.write(failure)
    return False


def usage_of(answer: dict[str, Any]) -> Usage | None:
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


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
