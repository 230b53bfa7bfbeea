"""Relay stage: the upstream's answer to the client.

Whole answers go out as the upstream (or its dialect's translation) produced them. Streams
are forwarded event by event as each arrives, never buffered whole; the client's response
starts only once the upstream's first event is in (until then a failure can still be
retried elsewhere). A stream that the upstream cuts, reports an error in, stalls past the
idle timeout or overflows ends with an OpenAI-shaped error event and no `[DONE]`, so a
client can tell a cut answer from a complete one.

Reads: `answer`, `request` (did the client ask for the usage chunk), `hipaa`. Writes:
`relayed`, `response`.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from pydantic_core import from_json

from gateway.accounting import usage_of
from gateway.errors import GatewayError
from gateway.pipeline import Exchange, RelayRecord, Stage, StageOrderError, need
from gateway.upstream.client import JsonAnswer, StreamAnswer
from gateway.upstream.sse import EventTooLarge, error_event, is_done

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    "X-Accel-Buffering": "no",
}


class Relay(Stage):
    name = "relay"

    async def enter(self, exchange: Exchange) -> None:
        answer = exchange.answer
        if answer is None:
            raise StageOrderError("the answer is not decided yet at this stage")
        if isinstance(answer, JsonAnswer):
            exchange.response = web.Response(body=answer.body, status=200, headers=_JSON_HEADERS)
            return
        # The gateway always asks upstreams for a final usage chunk (to charge tokens
        # exactly); it reaches the client only if the client asked for it too.
        options = need(exchange.request, "the request").stream_options
        client_wants_usage = bool(options and options.include_usage)
        relayed = exchange.relayed
        response = web.StreamResponse(
            status=200, headers={**_SSE_HEADERS, **exchange.response_headers()}
        )
        exchange.response = response
        await response.prepare(exchange.http)
        relayed.first_byte_ms = exchange.elapsed_ms()
        try:
            if not await _forward_events(answer, response, exchange, client_wants_usage):
                relayed.end = "upstream_cut"
        except ConnectionResetError:
            # The client left while an event was being written: nothing more to say to it.
            relayed.end = "client_aborted"
            return
        await response.write_eof()


async def _forward_events(
    answer: StreamAnswer,
    response: web.StreamResponse,
    exchange: Exchange,
    client_wants_usage: bool,
) -> bool:
    """Relays events until [DONE] (returns True) or a failure, which ends the stream with
    an error event and no [DONE] (returns False)."""
    try:
        relayed = exchange.relayed
        if await _forward(answer.first, response, relayed, client_wants_usage):
            return True
        async for event in answer.rest:
            if await _forward(event, response, relayed, client_wants_usage):
                return True
        failure = error_event("The upstream ended the stream early.", "upstream_error")
    except ConnectionResetError:
        raise  # the client's side, not the upstream's (aiohttp's subclasses ClientError)
    except GatewayError as error:  # reported by the upstream inside the stream
        if exchange.hipaa:
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
    event: bytes, response: web.StreamResponse, relayed: RelayRecord, client_wants_usage: bool
) -> bool:
    """Writes one event; True when it was the stream's [DONE]."""
    if is_done(event):
        await response.write(event)
        return True
    if b'"usage"' in event and _note_usage(event, relayed) and not client_wants_usage:
        return False
    if event.startswith(b"data:"):
        relayed.content_events += 1
    await response.write(event)
    return False


def _note_usage(event: bytes, relayed: RelayRecord) -> bool:
    """Records the usage an event carries; True when the event is only a usage chunk."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                chunk = from_json(line[5:])
            except ValueError:
                return False
            if not isinstance(chunk, dict) or (usage := usage_of(chunk)) is None:
                return False
            relayed.usage = usage
            return chunk.get("choices") == []
    return False
