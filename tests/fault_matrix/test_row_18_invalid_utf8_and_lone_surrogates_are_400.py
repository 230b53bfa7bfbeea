"""Row 18: text that is not valid Unicode is a 400 in OpenAI's shape, the same answer every
time and quoting nothing of the body: raw bytes that are not UTF-8 (0xFF, an overlong
form, a truncated sequence, a surrogate encoded as bytes, as CESU-8 does) and JSON escapes
of lone or reversed surrogates. Nothing is silently replaced (no U+FFFD reaches an
upstream): the upstream is not called. Valid text, a surrogate pair escape or raw UTF-8,
reaches the upstream as exactly the characters sent."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, RunningGateway, RunningUpstream, auth

CANARY = b"CANARY-18"


def with_content(middle: bytes) -> bytes:
    return (
        b'{"model":"'
        + MODEL.encode()
        + b'","messages":[{"role":"user","content":"'
        + CANARY
        + middle
        + CANARY
        + b'"}]}'
    )


async def post_raw(gateway: RunningGateway, body: bytes) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/chat/completions",
            data=body,
            headers={**auth(), "Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, await resp.json()


INVALID = {
    "0xff byte": b"\xff",
    "overlong slash": b"\xc0\xaf",
    "truncated euro sign": b"\xe2\x82",
    "surrogate as bytes (CESU-8)": b"\xed\xa0\x80",
    "lone high surrogate escape": b"\\ud800",
    "lone low surrogate escape": b"\\udfff",
    "reversed surrogate escapes": b"\\udc00\\ud800",
    "high surrogate then a letter": b"\\ud800\\u0041",
}


@pytest.mark.parametrize("middle", INVALID.values(), ids=INVALID.keys())
async def test_row_18_text_that_is_not_unicode_is_a_400_quoting_nothing(
    gateway: RunningGateway, upstream: RunningUpstream, middle: bytes
) -> None:
    first = await post_raw(gateway, with_content(middle))
    again = await post_raw(gateway, with_content(middle))

    status, answer = first
    assert status == 400
    assert again == first
    error = answer["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", None)
    assert error["message"].startswith("The request body is not valid JSON: ")
    assert CANARY.decode() not in error["message"]
    assert upstream.state.requests == []


VALID = {
    "surrogate pair escape": (b"\\ud83d\\ude00", "\U0001f600"),
    "raw UTF-8": ("é漢😀".encode(), "é漢😀"),
}


@pytest.mark.parametrize(("middle", "text"), VALID.values(), ids=VALID.keys())
async def test_row_18_valid_text_reaches_the_upstream_exactly(
    gateway: RunningGateway, upstream: RunningUpstream, middle: bytes, text: str
) -> None:
    status, _ = await post_raw(gateway, with_content(middle))

    assert status == 200
    [received] = upstream.state.requests
    canary = CANARY.decode()
    assert received.body["messages"][-1]["content"] == f"{canary}{text}{canary}"
