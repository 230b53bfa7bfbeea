"""The canary: prompts carrying a unique marker go down every path a request can take
(answered, streamed, refused by validation, routing, context length, the safety model or
HIPAA routing, failed by the upstream, cut, abandoned by the client), and afterwards the
marker is in no log line, no error the client received and no metric; every request left
exactly one audit line, which names it, its status and its team, and holds no content."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    OTHER_TEAM_KEY,
    TEAM_KEY,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    config_dict,
)

CANARY = f"CANARY-{uuid.uuid4().hex}"

GUARD = "llama-guard-canary"  # the fake answers like Llama Guard for a model named *guard*
TINY = "tiny-context-model"
ECHO = "echoing-model"  # its upstream quotes the prompt in its 400s, as some servers do

GUARDED_KEY = "gw-test-guarded-team-key-00112233445566"
HIPAA_KEY = "gw-test-hipaa-team-key-66554433221100"
KEYS = {
    "team-a": TEAM_KEY,
    "team-b": OTHER_TEAM_KEY,
    "team-guarded": GUARDED_KEY,
    "team-hipaa": HIPAA_KEY,
}

WITHHELD_400 = (
    "The upstream refused the request (HTTP 400); its message is withheld for requests under HIPAA."
)


@pytest.fixture
async def echoing_upstream() -> AsyncIterator[TestServer]:
    """An upstream whose 400 quotes the last user message back."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        said = body["messages"][-1]["content"]
        error = {"message": f"cannot process: {said}", "type": "invalid_request_error"}
        return web.json_response({"error": {**error, "param": None, "code": None}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


async def start(
    start_gateway: StartGateway, upstream: RunningUpstream, echoing: TestServer
) -> RunningGateway:
    raw = config_dict(upstream.url)
    upstreams = raw["upstreams"]
    upstreams["echoing"] = {
        **upstreams["fake-openai"],
        "base_url": str(echoing.make_url("/v1")).rstrip("/"),
        "hipaa_eligible": True,
    }
    raw["models"][GUARD] = {"upstreams": [{"upstream": "fake-openai"}]}
    raw["models"][TINY] = {"context_window": 64, "upstreams": [{"upstream": "fake"}]}
    raw["models"][ECHO] = {"upstreams": [{"upstream": "echoing"}]}
    raw["teams"]["team-a"]["models"] += [TINY, ECHO]
    raw["teams"]["team-guarded"] = {
        "key_hashes": [hash_key(GUARDED_KEY)],
        # The openai dialect: the gateway asks the safety model itself (the together
        # dialect would take safety_model natively).
        "models": [OPENAI_MODEL],
        "policies": ["guarded"],
    }
    raw["teams"]["team-hipaa"] = {
        "key_hashes": [hash_key(HIPAA_KEY)],
        "models": [MODEL, ECHO],
        "policies": ["hipaa"],
    }
    raw["policies"] = {
        "guarded": {"safety": {"model": GUARD, "check_output": True}},
        "hipaa": {"compliance": {"force": "hipaa"}},
    }
    raw["retries"] = {"max_attempts": 2, "backoff_base_ms": 1, "backoff_max_ms": 2}
    return await start_gateway(raw)


@dataclass
class Sent:
    request_id: str
    team: str | None
    status: int
    body: bytes
    headers: dict[str, str]

    def error_texts(self) -> list[str]:
        """What the client was told about a failure: the error body, or a stream's error
        events."""
        if self.status != 200:
            return [self.body.decode()]
        return [
            block.decode()
            for block in self.body.split(b"\n\n")
            if block.startswith(b"data: {") and b'"error"' in block
        ]


def messages(*prompt: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You are careful. {CANARY}"},
        {"role": "user", "content": " ".join([*prompt, CANARY])},
    ]


class Client:
    def __init__(self, session: aiohttp.ClientSession, gateway: RunningGateway) -> None:
        self.session = session
        self.gateway = gateway
        self.sent: list[Sent] = []

    def _headers(self, team: str | None, request_id: str) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if team is not None:
            headers["Authorization"] = f"Bearer {KEYS[team]}"
        return headers

    async def chat(self, name: str, team: str | None, **body: Any) -> Sent:
        request_id = f"canary-{len(self.sent)}-{name}"
        body.setdefault("model", MODEL)
        body.setdefault("messages", messages(name))
        async with self.session.post(
            f"{self.gateway.url}/v1/chat/completions",
            json=body,
            headers=self._headers(team, request_id),
        ) as resp:
            sent = Sent(request_id, team, resp.status, await resp.read(), dict(resp.headers))
        self.sent.append(sent)
        return sent

    async def leave_mid_stream(self, name: str, team: str) -> Sent:
        """Reads two events of a stream, then disconnects."""
        request_id = f"canary-{len(self.sent)}-{name}"
        body = {"model": MODEL, "stream": True, "messages": messages("a b c d e f g h i j k")}
        resp = await self.session.post(
            f"{self.gateway.url}/v1/chat/completions",
            json=body,
            headers=self._headers(team, request_id),
        )
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        second = await resp.content.readuntil(b"\n\n")
        resp.close()
        sent = Sent(request_id, team, 499, first + second, dict(resp.headers))
        self.sent.append(sent)
        return sent


def error_of(sent: Sent) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(sent.body)["error"]
    return error


async def wait_until(condition: Callable[[], object], timeout: float = 3.0) -> None:
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout, "condition never held"
        await asyncio.sleep(0.01)


async def test_canary_prompt_never_leaks_and_every_request_is_audited(
    start_gateway: StartGateway, upstream: RunningUpstream, echoing_upstream: TestServer
) -> None:
    gateway = await start(start_gateway, upstream, echoing_upstream)
    fake = upstream.state

    async with aiohttp.ClientSession() as session:
        client = Client(session, gateway)

        # Answered, whole and streamed, in two dialects.
        sent = await client.chat("ok", "team-a")
        assert sent.status == 200
        assert CANARY in sent.body.decode()  # the echo: the canary did go through
        sent = await client.chat("ok-openai", "team-a", model=OPENAI_MODEL)
        assert sent.status == 200
        sent = await client.chat("ok-stream", "team-a", stream=True)
        assert sent.status == 200
        assert sent.body.rstrip().endswith(b"data: [DONE]")
        sent = await client.chat("ok-hipaa-stream", "team-hipaa", stream=True)
        assert sent.status == 200

        # Refused by validation: the canary in a message, and as the offending value.
        sent = await client.chat("bad-temperature", "team-a", temperature=7)
        assert (sent.status, error_of(sent)["param"]) == (400, "temperature")
        sent = await client.chat("value-is-canary", "team-a", temperature=CANARY)
        assert (sent.status, error_of(sent)["param"]) == (400, "temperature")
        sent = await client.chat("stop-is-canary", "team-a", stop={"x": CANARY})
        assert sent.status == 400
        sent = await client.chat(
            "role-is-canary", "team-a", messages=[{"role": CANARY, "content": CANARY}]
        )
        assert sent.status == 400
        sent = await client.chat(
            "content-is-object", "team-a", messages=[{"role": "user", "content": {"x": CANARY}}]
        )
        assert sent.status == 400

        # Refused by routing, policy and context length.
        sent = await client.chat("unknown-model", "team-a", model="no-such-model")
        assert (sent.status, error_of(sent)["code"]) == (404, "model_not_found")
        # Only a plain identifier is named in the 404; a canary among other words is not.
        sent = await client.chat("model-is-canary", "team-a", model=f"{CANARY} please")
        assert (sent.status, error_of(sent)["code"]) == (404, "model_not_found")
        sent = await client.chat("not-my-model", "team-b", model=MODEL)
        assert sent.status == 404
        sent = await client.chat("no-key", None)
        assert sent.status == 401
        sent = await client.chat("too-long", "team-a", model=TINY, messages=messages("w " * 400))
        assert (sent.status, error_of(sent)["code"]) == (400, "context_length_exceeded")
        sent = await client.chat(
            "hipaa-no-upstream", "team-a", model=OPENAI_MODEL, compliance="hipaa"
        )
        assert (sent.status, error_of(sent)["code"]) == (400, "hipaa_unavailable")

        # Blocked by the safety model (the guard answers "unsafe\nS1" for UNSAFE:S1).
        unsafe = messages("UNSAFE:S1 now")
        sent = await client.chat("unsafe", "team-guarded", model=OPENAI_MODEL, messages=unsafe)
        assert (sent.status, error_of(sent)["code"]) == (400, "content_policy_violation")
        sent = await client.chat(
            "unsafe-stream", "team-guarded", model=OPENAI_MODEL, stream=True, messages=unsafe
        )
        assert (sent.status, error_of(sent)["code"]) == (400, "content_policy_violation")
        sent = await client.chat("guarded-safe", "team-guarded", model=OPENAI_MODEL)
        assert sent.status == 200

        # Failed by the upstream: a 500, a reset (retried, then given up), a 429.
        fake.default = Behavior(status=500)
        sent = await client.chat("upstream-500", "team-a")
        assert (sent.status, error_of(sent)["code"]) == (503, "upstream_unavailable")
        sent = await client.chat("upstream-500-stream", "team-a", stream=True)
        assert sent.status == 503
        fake.default = Behavior(reset=True)
        sent = await client.chat("upstream-reset", "team-a")
        assert (sent.status, error_of(sent)["code"]) == (503, "upstream_unavailable")
        sent = await client.chat("upstream-reset-stream", "team-a", stream=True)
        assert sent.status == 503
        fake.default = Behavior(status=429, retry_after="30")
        sent = await client.chat("upstream-429", "team-a")
        assert (sent.status, error_of(sent)["code"]) == (429, "upstream_rate_limited")
        fake.default = Behavior()

        # Cut by the upstream mid-stream, or an error event inside the stream.
        fake.script.append(Behavior(abort_after=2))
        sent = await client.chat("cut-stream", "team-a", stream=True)
        assert sent.status == 200 and len(sent.error_texts()) == 1
        fake.script.append(Behavior(stream_error=400, error_after=1))
        sent = await client.chat("error-in-stream-hipaa", "team-hipaa", stream=True)
        assert sent.status == 200
        (event,) = sent.error_texts()
        assert json.loads(event.removeprefix("data: "))["error"]["message"] == WITHHELD_400

        # Under HIPAA the upstream's own words are withheld: the fake's generic 400, and an
        # upstream that quotes the prompt back.
        fake.script.append(Behavior(status=400))
        sent = await client.chat("upstream-400-hipaa", "team-a", compliance="hipaa")
        assert sent.status == 400
        assert error_of(sent)["message"] == WITHHELD_400
        sent = await client.chat("echoing-400-hipaa", "team-hipaa", model=ECHO)
        assert sent.status == 400
        assert error_of(sent)["message"] == WITHHELD_400
        # (The same upstream without HIPAA does quote what it was sent: the check above is
        # not vacuous. No canary in this one.)
        sent = await client.chat(
            "echoing-400-control",
            "team-a",
            model=ECHO,
            messages=[{"role": "user", "content": "echo-control-text"}],
        )
        assert sent.status == 400
        assert "echo-control-text" in error_of(sent)["message"]

        # The client leaves mid-stream.
        fake.default = Behavior(delay=0.05)
        leaving = await client.leave_mid_stream("client-leaves", "team-a")
        await wait_until(lambda: leaving.request_id in fake.disconnected)
        fake.default = Behavior()

        await wait_until(lambda: len(gateway.log_records("audit")) >= len(client.sent))
        audits = gateway.log_records("audit")

        # One audit line per request: its id, status and team, and no content.
        assert len(audits) == len(client.sent)
        by_id = {record["request_id"]: record for record in audits}
        assert set(by_id) == {sent.request_id for sent in client.sent}
        for sent in client.sent:
            record = by_id[sent.request_id]
            assert record["status"] == sent.status, (sent.request_id, record)
            assert record["team"] == sent.team, (sent.request_id, record)
            assert not {"messages", "content", "prompt", "body"} & set(record), record

        async with session.get(f"{gateway.url}/metrics") as resp:
            assert resp.status == 200
            metrics = await resp.text()

    assert CANARY not in metrics
    leaks = [
        (sent.request_id, text)
        for sent in client.sent
        for text in [*sent.error_texts(), json.dumps(sent.headers)]
        if CANARY in text
    ]
    assert not leaks
    log_lines = [line for line in gateway.log_text().splitlines() if CANARY in line]
    assert not log_lines
