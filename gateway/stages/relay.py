"""Relay stage: the upstream's answer to the client.

Whole answers go out as the upstream (or its dialect's translation) produced them. Streams
are forwarded as the events arrive, never buffered: the events one read of the upstream
completed go out in one write (see `sse`), nothing waits for more; the client's response
starts only once the upstream's first event is in (until then a failure can still be
retried elsewhere). A stream that the upstream cuts, reports an error in, stalls past the
idle timeout, overflows or sends an event that is not a chat.completion.chunk ends with an
OpenAI-shaped error event and no `[DONE]`, so a client can tell a cut answer from a
complete one.

Writes to the client have deadlines too (`_ClientDeadline`): a client that takes nothing
for the serving upstream's `timeouts.idle`, or is still being waited on when the attempt's
`timeouts.total` runs out, has its connection closed. The request then unwinds like one
whose client left (the upstream request closed, the rate-limit slot given back), with the
outcome `client_stalled`.

A shutdown ends the streams still running at its drain deadline (`LiveStreams.cut_all`): each
ends with an error event saying so and no `[DONE]`, its upstream request closed, with the
outcome `gateway_shutdown` (not blamed on the client, nor on the upstream).

Reads: `answer`, `request` (did the client ask for the usage chunk), `hipaa`. Writes:
`relayed`, `response`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
from aiohttp import web
from pydantic_core import from_json

from gateway.accounting import usage_of
from gateway.errors import GatewayError
from gateway.pipeline import Exchange, RelayRecord, Stage, StageOrderError, need
from gateway.upstream.client import JsonAnswer, StreamAnswer
from gateway.upstream.shape import BadEvent
from gateway.upstream.sse import EventTooLarge, error_event, is_done

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    "X-Accel-Buffering": "no",
}


class LiveStreams:
    """The streams being relayed now, for a shutdown to end at its drain deadline."""

    def __init__(self) -> None:
        self._streams: dict[int, tuple[StreamAnswer, RelayRecord]] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def cut_all(self) -> int:
        """Ends every live stream: its upstream response is closed, so the relay's next read
        fails and it writes the shutdown's error event. Returns how many."""
        streams = list(self._streams.values())
        for answer, relayed in streams:
            relayed.end = "gateway_shutdown"
            answer.close()
        return len(streams)

    def add(self, exchange: Exchange, answer: StreamAnswer) -> None:
        self._streams[id(exchange)] = (answer, exchange.relayed)

    def discard(self, exchange: Exchange) -> None:
        self._streams.pop(id(exchange), None)


class Relay(Stage):
    name = "relay"

    def __init__(self, live: LiveStreams) -> None:
        self._live = live

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
        client = _ClientDeadline(response, exchange.http.transport, answer, relayed)
        self._live.add(exchange, answer)
        try:
            relayed.end = await _forward_events(answer, client, exchange, client_wants_usage)
            await client.write_eof()
        except ConnectionResetError:
            # The client left while an event was being written (or was cut for not taking
            # it): nothing more to say to it.
            if relayed.end != "client_stalled":
                relayed.end = "client_aborted"
        finally:
            self._live.discard(exchange)
            client.stop()


class _Writer(Protocol):
    async def write(self, data: bytes) -> None: ...


class _ClientDeadline:
    """The writes of one stream to its client, each with a deadline, without a timer per
    event: a write notes when it started (one clock read), and one timer, re-armed only
    when it fires, checks whether the write in progress has waited too long.

    A write waits only when the client's socket is full (aiohttp drains once 64 KiB are
    unsent), so one waiting `idle` seconds means the client took too little for too long.
    The connection is then aborted: the write fails, and the server cancels the handler as
    for any lost client, so the request unwinds and everything it holds is given back."""

    __slots__ = (
        "_ends_at",
        "_idle",
        "_loop",
        "_relayed",
        "_response",
        "_since",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        response: web.StreamResponse,
        transport: asyncio.Transport | None,
        answer: StreamAnswer,
        relayed: RelayRecord,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._response = response
        self._transport = transport
        self._relayed = relayed
        self._idle = answer.idle
        self._ends_at = answer.ends_at
        # When the write in progress began; None between writes.
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            min(self._loop.time() + self._idle, self._ends_at), self._check
        )

    async def write(self, data: bytes) -> None:
        self._since = now = self._loop.time()
        if now >= self._ends_at:
            # The attempt's total has run out (only the final error event is left to
            # write): the client may take it at once, but is not waited for.
            self._loop.call_soon(self._cut_if_writing)
        await self._response.write(data)
        self._since = None

    async def write_eof(self) -> None:
        self._since = self._loop.time()
        await self._response.write_eof()
        self._since = None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and now >= min(since + self._idle, self._ends_at):
            self._timer = None
            self._cut()
            return
        if now >= self._ends_at:
            self._timer = None  # writes from now on watch themselves (see write)
            return
        start = now if since is None else since
        self._timer = self._loop.call_at(min(start + self._idle, self._ends_at), self._check)

    def _cut_if_writing(self) -> None:
        if self._since is not None:
            self._cut()

    def _cut(self) -> None:
        self._relayed.end = "client_stalled"
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


async def _forward_events(
    answer: StreamAnswer,
    client: _ClientDeadline,
    exchange: Exchange,
    client_wants_usage: bool,
) -> str:
    """Relays events until [DONE] ("ok") or a failure, which ends the stream with an error
    event and no [DONE]; returns how the stream ended (`RelayRecord.end`)."""
    try:
        relayed = exchange.relayed
        if await _forward(answer.first, client, relayed, client_wants_usage):
            return "ok"
        async for batch in answer.rest:
            if await _forward(batch, client, relayed, client_wants_usage):
                return "ok"
        end = "upstream_cut"
        failure = error_event("The upstream ended the stream early.", "upstream_error")
    except ConnectionResetError:
        raise  # the client's side, not the upstream's (aiohttp's subclasses ClientError)
    except GatewayError as error:  # reported by the upstream inside the stream
        if exchange.hipaa:
            error = error.withheld()
        end = "upstream_cut"
        failure = error_event(error.message, error.code or "upstream_error", error.error_type)
    except BadEvent:
        # Neither the event nor anything after it is passed on; the upstream request is
        # closed on the way out (the upstream stage's leave), its connection not reused.
        end = "upstream_bad_event"
        failure = error_event(
            "The upstream sent a stream event that is not a valid chat.completion.chunk.",
            "upstream_error",
        )
    except EventTooLarge:
        end = "upstream_bad_event"
        failure = error_event("The upstream sent an event larger than allowed.", "upstream_error")
    except TimeoutError:
        end = "upstream_cut"
        failure = error_event("The upstream stopped sending in time.", "upstream_timeout")
    except aiohttp.ClientError:
        if exchange.relayed.end == "gateway_shutdown":  # closed by LiveStreams.cut_all
            end = "gateway_shutdown"
            failure = error_event(
                "The gateway is shutting down; this answer was cut at its drain deadline.",
                "gateway_shutdown",
                "service_unavailable_error",
            )
        else:
            end = "upstream_cut"
            failure = error_event("The upstream connection broke mid-stream.", "upstream_error")
    await client.write(failure)
    return end


async def _forward(
    batch: list[bytes], response: _Writer, relayed: RelayRecord, client_wants_usage: bool
) -> bool:
    """Writes a batch of events in one write, up to the stream's [DONE]; True when it came."""
    out: list[bytes] = []
    done = False
    for event in batch:
        if is_done(event):
            out.append(event)
            done = True
            break
        if b'"usage"' in event and _note_usage(event, relayed) and not client_wants_usage:
            continue
        if event.startswith(b"data:"):
            relayed.content_events += 1
        out.append(event)
    if out:
        await response.write(out[0] if len(out) == 1 else b"".join(out))
    return done


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
