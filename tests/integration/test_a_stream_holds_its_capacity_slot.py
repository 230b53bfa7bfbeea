"""A stream holds its upstream capacity slot for its whole length, until it ends or its
client leaves, and the request first in line starts as soon as it is freed."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import RunningGateway, RunningUpstream, StartGateway, auth, chat_body
from tests.integration.capacity import capacity_config, client_session


async def first_chunk_at(session: aiohttp.ClientSession, gateway: RunningGateway) -> float:
    """Starts a stream, reads its first chunk and the rest to its end; when the first came."""
    async with session.post(
        f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
    ) as resp:
        assert resp.status == 200
        await resp.content.readany()
        at = time.monotonic()
        await resp.read()
        return at


async def test_a_stream_holds_its_slot_until_it_ends(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    raw = capacity_config(upstream, spare_upstream, 1, 0.0)
    for running in (upstream, spare_upstream):
        running.state.default = Behavior(delay=0.1)  # each event 0.1 s: a stream of ~1 s
    gateway = await start_gateway(raw)
    async with client_session() as session:
        holders = [asyncio.create_task(first_chunk_at(session, gateway)) for _ in range(2)]
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(first_chunk_at(session, gateway))
        done, _ = await asyncio.wait([*holders, waiting], return_when=asyncio.FIRST_COMPLETED)
        first_end = time.monotonic()
        assert waiting not in done  # it did not start while both streams ran
        started = await waiting
        await asyncio.gather(*holders)

    assert upstream.state.peak_in_flight == spare_upstream.state.peak_in_flight == 1
    # Its first event is 0.1 s after it reached the upstream: it started within ms.
    assert started - first_end < 0.1 + 0.05, started - first_end


async def test_a_stream_whose_client_leaves_frees_its_slot_at_once(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    raw = capacity_config(upstream, spare_upstream, 1, 0.0)
    for running in (upstream, spare_upstream):
        running.state.default = Behavior(endless=True, delay=0.01)
    gateway = await start_gateway(raw)
    async with client_session() as session:
        left = await session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
        )
        await left.content.readany()
        kept = await session.post(
            f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
        )
        await kept.content.readany()
        waiting = asyncio.create_task(
            session.post(
                f"{gateway.url}/v1/chat/completions", json=chat_body(stream=True), headers=auth()
            )
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()  # two endless streams hold both slots
        sent_before = len(upstream.state.requests) + len(spare_upstream.state.requests)
        left.close()  # the client leaves
        gone = time.monotonic()
        resp = await waiting
        await resp.content.readany()
        started = time.monotonic() - gone
        resp.close()
        kept.close()

    assert sent_before == 2
    assert started < 0.1, started  # the next in line streams within milliseconds
    assert upstream.state.peak_in_flight == spare_upstream.state.peak_in_flight == 1
