"""A client that asks for a stream and then stops reading is cut once it has taken nothing
for the serving upstream's `timeouts.idle`: its connection is closed, the upstream request
is closed (its pooled connection freed), the team's concurrency slot is given back, the
request leaves the in-flight gauge, and the audit line says `client_stalled`.

The client is a real socket with a small receive buffer that sends its request and never
reads; the fake upstream streams 4 KB events as fast as they are taken, without end, so
the stream is still running when every buffer between them is full."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    TEAM_KEY,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    chat_body,
    config_dict,
    metric,
    post_chat,
)

IDLE = 0.5
# The machine is shared and noisy: "within about idle" is before IDLE + SLACK.
SLACK = 3.0
# Echoed one word per event: 4 KB events.
WORD = "w" * 4096


async def wait_until(condition: Callable[[], object], timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout, "condition never held"
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


@contextmanager
def stream_never_read(gateway: RunningGateway, request_id: str) -> Iterator[float]:
    """Sends a streaming request on a socket that is never read; yields when it was sent."""
    body = json.dumps(
        chat_body(stream=True, messages=[{"role": "user", "content": f"{WORD} {WORD}"}])
    ).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {gateway.server.host}:{gateway.server.port}\r\n"
        f"Authorization: Bearer {TEAM_KEY}\r\n"
        f"x-request-id: {request_id}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connecting, so the window the client advertises stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((str(gateway.server.host), int(gateway.server.port or 0)))
        sock.sendall(head + body)
        yield time.perf_counter()
    finally:
        sock.close()


async def test_a_client_that_stops_reading_is_cut_after_idle_and_frees_what_it_held(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["timeouts"] = {
        "connect": 2,
        "first_byte": 5,
        "idle": IDLE,
        "total": 30,
    }
    raw["teams"]["team-a"]["limits"] = {"max_concurrent": 1}
    gateway = await start_gateway(raw)
    upstream.state.script.append(Behavior(endless=True))

    with stream_never_read(gateway, "never-reads-1") as sent:
        await wait_until(lambda: upstream.state.disconnected, IDLE + SLACK)
        cut_after = time.perf_counter() - sent
        await wait_until(lambda: gateway.log_records("audit"), SLACK)

        [audit] = gateway.log_records("audit")
        # 499 like any request whose connection closed before the answer was complete.
        assert (audit["status"], audit["outcome"]) == (499, "client_stalled")
        assert audit["request_id"] == "never-reads-1"
        assert upstream.state.disconnected == ["never-reads-1"]
        assert upstream.state.completed_streams == 0
        # Cut for its own silence, not before: the first write that waited began after
        # the request was sent.
        assert IDLE <= cut_after < IDLE + SLACK
        assert await metric(gateway, "llm_gateway_requests_in_flight") == 0
        # The team's only concurrency slot is free again while the socket is still open.
        reply = await post_chat(gateway, chat_body(stream=True))
        assert reply.status == 200
        assert reply.body.endswith(b"data: [DONE]\n\n")
    assert gateway.log_records("internal_error") == []


async def test_total_cuts_a_client_that_stopped_reading_before_idle_would(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    """`timeouts.total` bounds the stream from the client's side too: a write still
    waiting when the attempt's total runs out is not waited for any longer."""
    total, idle = 1.5, 30
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["timeouts"] = {
        "connect": 2,
        "first_byte": 5,
        "idle": idle,
        "total": total,
    }
    gateway = await start_gateway(raw)
    upstream.state.script.append(Behavior(endless=True))

    with stream_never_read(gateway, "never-reads-2") as sent:
        await wait_until(lambda: upstream.state.disconnected, total + SLACK)
        cut_after = time.perf_counter() - sent
        await wait_until(lambda: gateway.log_records("audit"), SLACK)

    [audit] = gateway.log_records("audit")
    assert audit["outcome"] == "client_stalled"
    assert total <= cut_after < total + SLACK < idle
    assert await metric(gateway, "llm_gateway_requests_in_flight") == 0
