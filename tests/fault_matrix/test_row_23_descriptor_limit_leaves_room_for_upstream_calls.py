"""Fault matrix row 23, a connection flood against a small open-files limit: the gateway
lowers `server.max_connections` to what the limit can hold next to its upstream pools (and
says so), so a flood of idle sockets gets 503s while an admitted client's request can still
open its upstream connection; once the flood ends, new connections are served again."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp

from gateway.connections import RESERVED_FDS
from tests.conftest import RunningUpstream, auth, chat_body, config_dict
from tests.gateway_process import gateway_process, raw_request

OPEN_FILES = 256
UPSTREAM_CONNECTIONS = 8  # per upstream; the suite's configuration has two
FLOOD = 300


async def test_row_23_a_flood_leaves_descriptors_for_upstream_calls(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    raw = config_dict(upstream.url, header_timeout_s=30)
    for upstream_config in raw["upstreams"].values():
        upstream_config["max_connections"] = UPSTREAM_CONNECTIONS
    with gateway_process(tmp_path, raw=raw, open_files=(OPEN_FILES, OPEN_FILES)) as gateway:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async with session.get(f"{gateway.url}/healthz") as resp:
                assert resp.status == 200  # this client's connection is open before the flood
            flood = []
            for _ in range(FLOOD):
                flood.append(socket.create_connection(("127.0.0.1", gateway.port)))
            await asyncio.sleep(0.5)
            over_cap = raw_request(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")

            async with session.post(
                f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=auth()
            ) as resp:
                chat_status = resp.status
                chat = await resp.json()
        for sock in flood:
            sock.close()
        await asyncio.sleep(0.3)
        after = raw_request(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        lowered = gateway.records("max_connections_lowered")

    assert chat_status == 200, chat
    assert chat["choices"][0]["message"]["content"]
    assert over_cap.status == 503
    assert over_cap.json()["error"]["code"] == "too_many_connections"
    assert after.status == 200
    cap = OPEN_FILES - 2 * UPSTREAM_CONNECTIONS - RESERVED_FDS
    assert [(r["configured"], r["max_connections"]) for r in lowered] == [(4096, cap)]
