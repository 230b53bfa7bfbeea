"""Fault matrix row 23, connection flood: with `server.max_connections` connections open, a
new one is answered at once with 503 in the OpenAI shape and `Retry-After`, then closed (the
openai SDK sees an APIStatusError, not a broken connection); requests are served again as
soon as connections close."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEAM_KEY
from tests.gateway_process import GatewayProcess, gateway_process, raw_request

CAP = 20


def dropped_over_capacity(gateway: GatewayProcess) -> float:
    reply = raw_request(gateway.port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply.status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
        if sample.name == "llm_gateway_connections_dropped_total"
        and sample.labels == {"reason": "over_capacity"}
    )


async def test_row_23_a_connection_over_the_cap_gets_503_and_service_resumes(
    tmp_path: Path,
) -> None:
    with gateway_process(tmp_path, max_connections=CAP, header_timeout_s=30) as gateway:
        dropped_before = dropped_over_capacity(gateway)
        idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(CAP)]
        await asyncio.sleep(0.2)  # all accepted

        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.url}/v1/models") as resp,
        ):
            status, headers, body = resp.status, resp.headers, await resp.json()
        sdk = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.models.list()
        await sdk.close()

        idle.pop().close()
        deadline = time.monotonic() + 5
        while (
            reply := raw_request(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        ).status != 200:
            assert time.monotonic() < deadline, "no request was served after a connection closed"
            await asyncio.sleep(0.05)
        for sock in idle:
            sock.close()
        await asyncio.sleep(0.2)
        dropped = dropped_over_capacity(gateway) - dropped_before

    assert status == 503
    assert headers["Retry-After"] == "1"
    assert headers["Connection"] == "close"
    assert headers["Server"] == "llm-gateway"
    assert body == {
        "error": {
            "message": "The gateway has too many open connections; retry shortly.",
            "type": "service_unavailable_error",
            "param": None,
            "code": "too_many_connections",
        }
    }
    assert refused.value.status_code == 503
    assert reply.status == 200
    assert dropped >= 2
