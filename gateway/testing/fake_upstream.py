"""A deterministic OpenAI-compatible upstream, shipped for tests, the demo and benchmarks.

It answers `POST /v1/chat/completions` with an echo of the last user message, with exact
`usage` counts (one token per whitespace-separated word), streamed or not, honouring
`max_tokens`, `n` and `stream_options.include_usage`. It records every request it receives
(headers and body) and every stream whose client went away, so tests can assert what the
gateway sent and when it hung up. A model whose name contains "guard" answers like Llama
Guard instead: `safe`, or `unsafe\nS1,S10` when a message carries `UNSAFE:S1,S10`.

So that multi-turn tool loops can be played, a `tool_choice` naming a function (with
`tools`) is answered with one call of it, arguments `{"text": <last user message>}`,
finish reason `tool_calls` (streamed as OpenAI streams tool calls); a `response_format` of
type `json_schema` or `json_object` is answered with the echo as JSON, `{"echo": <last
user message>}`. A whole answer's message carries the response-only keys real servers add:
OpenAI's `refusal: null, annotations: []` by default, vLLM's (`tool_calls: []` and nulls)
with the behavior `shape=vllm`.

Faults on demand, from the first that applies: the `x-fake-behavior` request header, the
next entry of `FakeUpstream.script`, or the server's default. A behavior is a `;`-separated
list such as `status=503;retry_after=2`, `reset`, `hang`, `abort_after=3`, `delay=0.05`,
`stall_after=2` (silence mid-stream), `endless` (a stream whose content events repeat until
the client leaves, as fast as they are taken), `stall_body` (a whole answer's headers and
half its body, then silence), `stream_error=400;error_after=2` (vLLM's way: an error event
inside a 200 stream), `bad_event=utf8;error_after=2` (an event that is not a chunk, then the
rest of the stream as if nothing happened; `utf8`: invalid UTF-8 in a chunk's content,
`json`: not JSON, `shape`: JSON of another shape; a whole answer is then bad the same way),
`usage_total=900` (the answer's `usage` reports 900 tokens in all, whatever it says: a
short request that costs a lot, for token limits), `latency=0.1` (seconds before answering
at all: a model's service time; with `jitter=0.05`, drawn uniformly 0.05 either side) and
`shape=vllm` (not a fault: vLLM's message keys). The server counts the chat requests it is
serving (`in_flight`) and the most it ever served at once (`peak_in_flight`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Behavior:
    status: int | None = None  # answer with this error status
    retry_after: str | None = None  # Retry-After header with the error status
    reset: bool = False  # drop the connection without answering
    hang: bool = False  # never answer (until the client goes away)
    abort_after: int | None = None  # stream this many content events, then drop
    delay: float = 0.0  # seconds before each stream event, and before an error status
    stall_after: int | None = None  # stream this many content events, then go silent
    endless: bool = False  # repeat the stream's content events until the client leaves
    stall_body: bool = False  # a whole answer: headers and half the body, then go silent
    stream_error: int | None = None  # send an error event with this integer code...
    bad_event: str | None = None  # ...or a bad event of this kind (see BAD_EVENTS)...
    error_after: int = 0  # ...after this many content events
    shape: str = "openai"  # whose response-only message keys a whole answer carries
    usage_total: int | None = None  # report this total in `usage` (completion = total - prompt)
    latency: float = 0.0  # seconds before answering anything: a model's service time
    jitter: float = 0.0  # the latency drawn uniformly this much either side of it

    def headers(self) -> dict[str, str] | None:
        """Headers of the error answer (Retry-After)."""
        return {"Retry-After": self.retry_after} if self.retry_after else None

    @classmethod
    def parse(cls, text: str, base: Behavior | None = None) -> Behavior:
        behavior = base or cls()
        for item in filter(None, (part.strip() for part in text.split(";"))):
            key, _, value = item.partition("=")
            if key == "status":
                behavior = replace(behavior, status=int(value))
            elif key == "retry_after":
                behavior = replace(behavior, retry_after=value)
            elif key == "reset":
                behavior = replace(behavior, reset=True)
            elif key == "hang":
                behavior = replace(behavior, hang=True)
            elif key == "abort_after":
                behavior = replace(behavior, abort_after=int(value))
            elif key == "delay":
                behavior = replace(behavior, delay=float(value))
            elif key == "stall_after":
                behavior = replace(behavior, stall_after=int(value))
            elif key == "endless":
                behavior = replace(behavior, endless=True)
            elif key == "stall_body":
                behavior = replace(behavior, stall_body=True)
            elif key == "stream_error":
                behavior = replace(behavior, stream_error=int(value))
            elif key == "bad_event" and value in BAD_EVENTS:
                behavior = replace(behavior, bad_event=value)
            elif key == "error_after":
                behavior = replace(behavior, error_after=int(value))
            elif key == "shape" and value in MESSAGE_SHAPES:
                behavior = replace(behavior, shape=value)
            elif key == "usage_total":
                behavior = replace(behavior, usage_total=int(value))
            elif key == "latency":
                behavior = replace(behavior, latency=float(value))
            elif key == "jitter":
                behavior = replace(behavior, jitter=float(value))
            else:
                raise ValueError(f"unknown fake behavior {key!r}")
        return behavior


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    """State and behavior of one fake upstream server; `app()` serves it."""

    default: Behavior = field(default_factory=Behavior)
    # When set, requests must carry `Authorization: Bearer <api_key>`, else 401.
    api_key: str | None = None
    script: deque[Behavior] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    # Request ids of requests whose client disconnected before the answer ended: a stream
    # cut short, or a hang or stall the client gave up on.
    disconnected: list[str] = field(default_factory=list)
    completed_streams: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    # Each server its own latencies (a shared seed would keep two servers in step).
    rng: random.Random = field(default_factory=random.Random)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._counted_chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        from gateway.testing.fake_anthropic import anthropic_messages

        return await anthropic_messages(self, request)

    def behavior_for(self, request: web.Request) -> Behavior:
        header = request.headers.get("x-fake-behavior")
        if header is not None:
            return Behavior.parse(header, self.default)
        if self.script:
            return self.script.popleft()
        return self.default

    async def play_fault(self, behavior: Behavior, request: web.Request) -> int | None:
        """The fault to play before answering: drops the connection, hangs, or waits and
        returns the error status to answer with; None to answer normally."""
        if behavior.reset:
            assert request.transport is not None
            request.transport.abort()
            return 500  # never reaches anyone: the connection is gone
        if behavior.hang:
            await self._until_the_client_leaves(request)
        if behavior.status is not None and behavior.delay:
            await asyncio.sleep(behavior.delay)
        return behavior.status

    async def answer_whole(
        self, request: web.Request, behavior: Behavior, answer: dict[str, Any]
    ) -> web.StreamResponse:
        """A whole JSON answer, or with `stall_body` its headers and half its body, then
        silence until the client gives up; with `bad_event`, an answer bad that way."""
        body = json.dumps(answer).encode()
        if behavior.bad_event is not None:
            return web.Response(
                body=bad_answer(behavior.bad_event, body), content_type="application/json"
            )
        if not behavior.stall_body:
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await self._until_the_client_leaves(request)
        return response  # never reached: the wait ends only by cancellation

    async def _until_the_client_leaves(self, request: web.Request) -> None:
        # The server cancels a handler whose client went away: that is the moment the
        # client released the connection, which tests of timeouts assert.
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.disconnected.append(request.headers.get("x-request-id", ""))
            raise

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _counted_chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._chat(request)
        finally:
            self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        behavior = self.behavior_for(request)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "body is not JSON")
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(RecordedRequest(headers, body))
        if behavior.latency:
            spread = behavior.jitter * (2 * self.rng.random() - 1)
            await asyncio.sleep(max(0.0, behavior.latency + spread))

        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        if (status := await self.play_fault(behavior, request)) is not None:
            return _error(status, f"fake upstream error {status}", headers=behavior.headers())
        if not isinstance(body.get("messages"), list):
            return _error(400, "messages is required", param="messages")

        answer = EchoAnswer.of(body)
        if behavior.usage_total is not None:
            answer = replace(answer, reported_total=behavior.usage_total)
        if body.get("stream"):
            return await self._stream(request, body, answer, behavior)
        return await self.answer_whole(
            request, behavior, answer.completion(response_only_keys(behavior.shape))
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], answer: EchoAnswer, behavior: Behavior
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks: Iterable[dict[str, Any]] = answer.chunks(include_usage)
        if behavior.endless:
            # The role event, then the content events over and over: never an end.
            every = list(chunks)
            chunks = itertools.chain(every[:1], itertools.cycle(filter(_is_content, every)))
        events = (
            (b"data: " + json.dumps(chunk).encode() + b"\n\n", _is_content(chunk))
            for chunk in chunks
        )
        return await self.play_stream(request, behavior, events, _stream_error, b"data: [DONE]\n\n")

    async def play_stream(
        self,
        request: web.Request,
        behavior: Behavior,
        events: Iterable[tuple[bytes, bool]],
        error_event: Callable[[int], bytes],
        tail: bytes = b"",
    ) -> web.StreamResponse:
        """Streams `events` (each with whether it carries content) and then `tail`, playing
        the behavior's stream faults, and counts completed streams and clients that left."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent_content = 0
        bad_event = None if behavior.bad_event is None else BAD_EVENTS[behavior.bad_event]
        try:
            for event, content in events:
                if behavior.delay:
                    await asyncio.sleep(behavior.delay)
                if behavior.abort_after is not None and sent_content >= behavior.abort_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if behavior.stall_after is not None and sent_content >= behavior.stall_after:
                    await asyncio.Event().wait()
                if behavior.stream_error is not None and sent_content >= behavior.error_after:
                    await response.write(error_event(behavior.stream_error))
                    await response.write_eof()
                    return response
                if bad_event is not None and sent_content >= behavior.error_after:
                    await response.write(bad_event)
                    bad_event = None
                await response.write(event)
                sent_content += content
            if tail:
                await response.write(tail)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.append(request.headers.get("x-request-id", ""))
            raise
        self.completed_streams += 1
        return response


MESSAGE_SHAPES = ("openai", "vllm")

# What `bad_event=KIND` sends inside a stream.
BAD_EVENTS = {
    # A chunk of the right shape whose content is not UTF-8.
    "utf8": b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","choices":'
    b'[{"index":0,"delta":{"content":"\xff\xfe"},"finish_reason":null}]}\n\n',
    "json": b"data: {this is not JSON\n\n",
    "shape": b'data: {"unexpected": true}\n\n',
}


def bad_answer(kind: str, body: bytes) -> bytes:
    """A whole answer (`body`) made bad the way `bad_event=KIND` says."""
    if kind == "utf8":
        return body.replace(b'"echo:', b'"\xff\xfeecho:')
    if kind == "json":
        return b"{this is not JSON"
    return b'{"unexpected": true}'


def response_only_keys(shape: str) -> dict[str, Any]:
    """The response-only keys a kind of server puts in a whole answer's message, as it
    sends them when the model said nothing of the kind."""
    if shape == "vllm":
        return {
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning_content": None,
        }
    return {"refusal": None, "annotations": []}


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str

    def as_json(self, index: int) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": f"call_fake_{index}", "type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class EchoAnswer:
    model: str
    words: list[str]
    finish_reason: str
    n: int
    prompt_tokens: int
    created: int
    # When set, the answer is this call instead of text (its arguments are the words).
    tool_call: ToolCall | None = None
    reported_total: int | None = None  # what `usage` claims in all, when set

    @classmethod
    def of(cls, body: dict[str, Any]) -> EchoAnswer:
        messages = body["messages"]
        last_user = next(
            (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
            {},
        )
        echoed = text_of(last_user.get("content"))
        called = _forced_function(body)
        tool_call = None
        if "guard" in str(body.get("model")).lower():
            words = [guard_verdict(messages)]
        elif called is not None:
            tool_call = ToolCall(called, json.dumps({"text": echoed}))
            words = tool_call.arguments.split()
        elif _wants_json(body):
            words = json.dumps({"echo": echoed}).split()
        else:
            words = ("echo: " + echoed).split()
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish_reason = "stop" if tool_call is None else "tool_calls"
        if isinstance(limit, int) and len(words) > limit and tool_call is None:
            words, finish_reason = words[:limit], "length"
        prompt_tokens = sum(
            len(text_of(m.get("content")).split()) for m in messages if isinstance(m, dict)
        )
        return cls(
            model=str(body.get("model")),
            words=words,
            finish_reason=finish_reason,
            n=int(body.get("n") or 1),
            prompt_tokens=prompt_tokens,
            created=int(time.time()),
            tool_call=tool_call,
        )

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": kind, "created": self.created, "model": self.model}

    def usage(self) -> dict[str, int]:
        completion = len(self.words) * self.n
        if self.reported_total is not None:
            completion = self.reported_total - self.prompt_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def message(self, shape: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(self.words)}
        message.update(shape)
        if self.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [self.tool_call.as_json(0)]
        return message

    def completion(self, shape: dict[str, Any] | None = None) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": self.message(shape or {}),
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
            for i in range(self.n)
        ]
        return {**self._base("chat.completion"), "choices": choices, "usage": self.usage()}

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}

        if self.tool_call is not None:
            # OpenAI's way: the call's id and name first, then its arguments in pieces.
            call = self.tool_call.as_json(0)
            call["function"]["arguments"] = ""
            first: dict[str, Any] = {"role": "assistant", "content": None}
            first["tool_calls"] = [{"index": 0, **call}]
            out = [chunk(i, first, None) for i in range(self.n)]
        else:
            out = [chunk(i, {"role": "assistant", "content": ""}, None) for i in range(self.n)]
        for position, word in enumerate(self.words):
            text = word if position == 0 else " " + word
            delta: dict[str, Any] = {"content": text}
            if self.tool_call is not None:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
            out.extend(chunk(i, delta, None) for i in range(self.n))
        out.extend(chunk(i, {}, self.finish_reason) for i in range(self.n))
        if include_usage:
            out.append(
                {**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage()}
            )
        return out


def _forced_function(body: dict[str, Any]) -> str | None:
    """The function an OpenAI-style `tool_choice` forces, when `tools` are given."""
    choice = body.get("tool_choice")
    if not body.get("tools") or not isinstance(choice, dict) or choice.get("type") != "function":
        return None
    name = (choice.get("function") or {}).get("name")
    return name if isinstance(name, str) else None


def _wants_json(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_schema",
        "json_object",
    )


def _is_content(chunk: dict[str, Any]) -> bool:
    return bool(chunk["choices"] and _carries_content(chunk["choices"][0]["delta"]))


def _carries_content(delta: dict[str, Any]) -> bool:
    return bool(delta.get("content")) or any(
        (call.get("function") or {}).get("arguments") for call in delta.get("tool_calls") or ()
    )


def guard_verdict(messages: list[Any]) -> str:
    """A Llama Guard-style verdict: `unsafe` and the categories after an `UNSAFE:` marker
    found in any turn (e.g. `UNSAFE:S1,S10`), else `safe`."""
    for message in messages:
        text = text_of(message.get("content")) if isinstance(message, dict) else ""
        marker = text.find("UNSAFE:")
        if marker >= 0:
            categories = (
                text[marker + len("UNSAFE:") :].split()[0] if text[marker + 7 :].strip() else ""
            )
            return f"unsafe\n{categories}"
    return "safe"


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _stream_error(code: int) -> bytes:
    error = {
        "object": "error",
        "message": f"fake upstream error {code} inside the stream",
        "type": "BadRequestError" if code < 500 else "InternalServerError",
        "param": None,
        "code": code,
    }
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def _error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": "fake_error", "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


async def serve(host: str, port: int, upstream: FakeUpstream) -> web.AppRunner:
    runner = web.AppRunner(upstream.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
