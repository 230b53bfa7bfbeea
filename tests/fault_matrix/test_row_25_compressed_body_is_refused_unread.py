"""Fault matrix row 25: a compressed request body (here a gzip bomb: 0.9 MiB that inflates
to 900 MiB) is refused with 415 from its headers, on every path, key or no key, without a
byte of it inflated: the process spends next to no CPU on it and other clients do not
wait. The connection is then closed rather than the rest of the body drained."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import auth
from tests.gateway_process import GatewayProcess, gateway_process, raw_request

INFLATED_MIB = 900


def gzip_bomb(mib: int) -> bytes:
    """A gzip member of `mib` MiB of spaces, built from one compressed MiB: after a full
    flush the compressor starts afresh, so every MiB compresses to the same bytes."""
    chunk = b" " * (1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    last_block = b"\x03\x00"  # an empty final block
    return header + block * mib + last_block + struct.pack("<II", crc, (mib << 20) % (1 << 32))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(INFLATED_MIB)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(tmp_path_factory.mktemp("row25")) as running:
        yield running


@pytest.mark.parametrize(
    ("path", "key"),
    [("/v1/chat/completions", True), ("/v1/chat/completions", False), ("/v1/nothing", False)],
    ids=["chat-with-key", "chat-without-key", "unknown-path"],
)
async def test_row_25_a_gzip_bomb_is_refused_without_inflating_it(
    gateway: GatewayProcess, bomb: bytes, path: str, key: bool
) -> None:
    latencies: list[float] = []
    sent = asyncio.Event()

    async def normal_client(session: aiohttp.ClientSession) -> None:
        while not sent.is_set():
            started = time.perf_counter()
            async with session.get(f"{gateway.url}/healthz") as resp:
                assert resp.status == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)

    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    if key:
        headers.update(auth())
    cpu_before = gateway.cpu_seconds()
    async with aiohttp.ClientSession() as session:
        other = asyncio.create_task(normal_client(session))
        await asyncio.sleep(0.1)
        async with session.post(f"{gateway.url}{path}", data=bomb, headers=headers) as resp:
            status, answer = resp.status, await resp.json()
            accepted = resp.headers.get("Accept-Encoding")
        # Whatever the process would do with the body after answering, it does now.
        await asyncio.sleep(0.5)
        sent.set()
        await other
    cpu = gateway.cpu_seconds() - cpu_before

    assert status == 415
    assert answer == {
        "error": {
            "message": "Compressed request bodies are not accepted; send the body uncompressed.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unsupported_content_encoding",
        }
    }
    assert accepted == "identity"
    # Inflating it took 1.6 to 1.9 s of CPU here, during which other requests waited up
    # to 1.7 s; refusing it takes milliseconds (pings included).
    assert cpu < 0.5, f"the gateway spent {cpu:.2f} s of CPU on a refused body"
    assert len(latencies) >= 5
    assert max(latencies) < 1.0, f"a concurrent request waited {max(latencies):.2f} s"


def test_row_25_the_connection_closes_without_the_rest_of_the_body(
    gateway: GatewayProcess, bomb: bytes
) -> None:
    declared = 10 * (1 << 20)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()

    # Only the first 64 KiB of the 10 MiB announced are ever sent.
    reply = raw_request(gateway.port, head + bomb[: 64 * 1024], timeout=5, until_closed=True)

    assert reply.status == 415
    assert reply.json()["error"]["code"] == "unsupported_content_encoding"
    assert reply.closed, "the gateway kept the connection to drain the announced body"


def test_row_25_an_encoding_listed_after_identity_is_refused_too(gateway: GatewayProcess) -> None:
    body = b'{"model": "m", "messages": []}'
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Encoding: identity\r\n"
        f"Content-Encoding: br\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    reply = raw_request(gateway.port, head + body)

    assert reply.status == 415
