"""Row 24: cross-talk between requests.

Best in class: each client receives only its own upstream's bytes, also when streams are
abandoned half-way, attempts fail and are retried, and upstream connections are reused
from a small pool. Every request carries a unique nonce, which the fake upstream echoes
in every content event; clients abort at random; the fakes fail some attempts (503,
reset) so that retries happen; two upstreams with 4 connections each serve 40 clients at
a time. No client may ever see another's nonce, and every upstream request must carry
its own client's nonce under its own request id."""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    asyncio_complaints,
    auth,
    chat_body,
    config_dict,
    metric,
    tasks_in_gateway_code,
    wait_for,
)

ROUNDS = 3
CLIENTS = 40
REPEAT = 6  # the nonce, said this many times: one content event each
NONCE = re.compile(r"nonce-\d+-\d+-[0-9a-f]{8}")


@dataclass
class Client:
    request_id: str
    nonce: str
    stream: bool
    abort_after: int | None  # events read before leaving; None: read it all
    status: int = 0
    body: bytes = b""


async def call(session: aiohttp.ClientSession, gateway: RunningGateway, client: Client) -> None:
    body = chat_body(
        stream=client.stream,
        messages=[{"role": "user", "content": " ".join([client.nonce] * REPEAT)}],
    )
    headers = {**auth(), "x-request-id": client.request_id}
    resp = await session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    client.status = resp.status
    assert resp.headers["x-request-id"] == client.request_id
    if client.abort_after is None or resp.status != 200:
        client.body = await resp.read()
        return
    for _ in range(client.abort_after):
        client.body += await resp.content.readuntil(b"\n\n")
    resp.close()


def upstreams(first: RunningUpstream, second: RunningUpstream) -> dict[str, object]:
    raw = config_dict(first.url)
    small_pool = {
        **raw["upstreams"]["fake"],
        "max_connections": 4,
        "timeouts": {"connect": 20, "first_byte": 20, "idle": 20, "total": 60},
    }
    raw["upstreams"]["fake"] = small_pool
    raw["upstreams"]["fake-b"] = {**small_pool, "base_url": f"{second.url}/v1"}
    raw["models"][MODEL]["upstreams"] = [
        {"upstream": "fake", "model": UPSTREAM_MODEL},
        {"upstream": "fake-b", "model": UPSTREAM_MODEL},
    ]
    raw["retries"] = {"budget_min": CLIENTS}  # let every failed attempt be retried
    raw["health"] = {"consecutive_failures": 1000}  # keep both in service
    return raw


async def test_row_24_no_client_ever_sees_another_clients_bytes(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await start_gateway(upstreams(upstream, spare_upstream))
    rng = random.Random(24)
    clients: list[Client] = []
    for fake in (upstream, spare_upstream):
        fake.state.default = Behavior(delay=0.01)

    async with aiohttp.ClientSession() as session:
        for round_ in range(ROUNDS):
            for fake in (upstream, spare_upstream):  # some attempts fail before any byte
                fake.state.script.extend(
                    rng.choice([Behavior(status=503), Behavior(reset=True), Behavior(delay=0.01)])
                    for _ in range(CLIENTS // 2)
                )
            batch = []
            for i in range(CLIENTS):
                stream = rng.random() < 0.8
                batch.append(
                    Client(
                        request_id=f"xtalk-{round_}-{i}",
                        nonce=f"nonce-{round_}-{i}-{rng.getrandbits(32):08x}",
                        stream=stream,
                        abort_after=rng.randint(1, 5) if stream and rng.random() < 0.35 else None,
                    )
                )
            await asyncio.gather(*(call(session, gateway, c) for c in batch))
            clients += batch

    aborted = [c for c in clients if c.abort_after is not None]
    assert 20 <= len(aborted) <= 60 and len(clients) - len(aborted) >= 60
    # Each client saw its own nonce and no other. (A request whose every attempt met a
    # scripted failure gets its 503: it must not carry anyone's bytes either.)
    statuses = [c.status for c in clients]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 0.9 * len(clients)
    for client in clients:
        seen = set(NONCE.findall(client.body.decode()))
        assert seen <= {client.nonce}, (client.request_id, seen)
        if client.status == 200 and client.abort_after is None:
            assert client.body.decode().count(client.nonce) == REPEAT, client.request_id
    # Each upstream request carried its own client's nonce (retries included).
    nonce_of = {c.request_id: c.nonce for c in clients}
    sent = [r for fake in (upstream, spare_upstream) for r in fake.state.requests]
    assert len(sent) > len(clients)  # attempts were retried
    for recorded in sent:
        said = set(NONCE.findall(recorded.body["messages"][-1]["content"]))
        assert said == {nonce_of[recorded.headers["x-request-id"]]}
    assert await metric(gateway, "llm_gateway_upstream_retries_total") > 0

    # The departures were noticed and nothing was left behind.
    await wait_for(lambda: len(gateway.log_records("audit")) == len(clients))
    outcomes = {a["request_id"]: a["outcome"] for a in gateway.log_records("audit")}
    assert all(
        outcomes[c.request_id] == "ok" for c in clients if c.abort_after is None and c.status == 200
    )
    assert await metric(gateway, "llm_gateway_requests_in_flight") == 0
    await wait_for(lambda: not tasks_in_gateway_code(), 3.0)
    assert asyncio_complaints(caplog) == []
