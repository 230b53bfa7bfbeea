"""Row 26: PHI leaking into logs, the audit, metrics or error bodies.

Best in class: a canary put in prompts, in headers and in invalid fields, and sent down
every path (answered, streamed, refused by auth, by the transport checks, by validation,
rate limited, the limiter unavailable, the upstream failing, timing out or cut, the
client leaving), appears nowhere but in the upstream request and the upstream's own
answer: not in a log or audit line, a metric, an error body or a response header.
(tests/integration/test_canary.py covers the safety-model, HIPAA and policy paths with
canary prompts; this row adds headers, the transport and every invalid field.)

Two canaries share one marker: a sentence (PHI as typed in a prompt) and a token without
spaces (an MRN, the only shape that fits in a cookie or a header name)."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    OTHER_TEAM_KEY,
    OTHER_TEAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    free_port,
    wait_for,
)

MARK = uuid.uuid4().hex
PHRASE = f"Jane Q. Patient, MRN {MARK}, DOB 1961-04-02"
TOKEN = f"MRN{MARK}"
JSON = {"Content-Type": "application/json"}


@dataclass
class Reply:
    case: str
    status: int
    headers: str
    body: str

    @property
    def text(self) -> str:
        """Headers and body, as the client got them."""
        return self.headers + self.body

    def outside_the_answer(self) -> str:
        """Headers and body but the model's answer (the fake echoes the prompt: that text
        is the upstream's, not something the gateway added): a whole answer without its
        messages' content, a stream's error events only."""
        if self.body.startswith("data:"):
            errors = [e for e in self.body.split("\n\n") if '"error"' in e]
            return self.headers + "\n\n".join(errors)
        try:
            answer = json.loads(self.body)
        except ValueError:
            return self.text
        for choice in answer.get("choices", []) if isinstance(answer, dict) else []:
            choice["message"]["content"] = None
        return self.headers + json.dumps(answer)


class Client:
    def __init__(self, session: aiohttp.ClientSession, gateway: RunningGateway) -> None:
        self.session = session
        self.gateway = gateway
        self.replies: list[Reply] = []

    async def send(
        self,
        case: str,
        method: str = "POST",
        path: str = "/v1/chat/completions",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Reply:
        async with self.session.request(
            method,
            f"{self.gateway.url}{path}",
            headers=auth() if headers is None else headers,
            **kwargs,
        ) as resp:
            body = await resp.read()
        reply = Reply(case, resp.status, json.dumps(dict(resp.headers)), body.decode("latin-1"))
        self.replies.append(reply)
        return reply

    async def leave_mid_stream(self, case: str) -> None:
        body = chat_body(stream=True, messages=[{"role": "user", "content": f"{PHRASE} a b c d"}])
        resp = await self.session.post(
            f"{self.gateway.url}/v1/chat/completions",
            json=body,
            headers={**auth(), "x-request-id": case},
        )
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        resp.close()
        self.replies.append(Reply(case, 499, json.dumps(dict(resp.headers)), first.decode()))


def prompt(**params: Any) -> dict[str, Any]:
    """A request whose prompt carries both canaries, with `params` added or replaced."""
    messages = [
        {"role": "system", "content": PHRASE},
        {"role": "user", "content": f"{PHRASE} {TOKEN}"},
    ]
    return {**chat_body(messages=messages), **params}


def config(upstream: RunningUpstream) -> dict[str, Any]:
    raw = config_dict(upstream.url)
    raw["upstreams"]["fake"]["timeouts"] = {
        "connect": 1,
        "first_byte": 0.3,
        "idle": 0.3,
        "total": 5,
    }
    raw["retries"] = {"backoff_base_ms": 1, "backoff_max_ms": 2}
    raw["teams"]["team-b"]["limits"] = {"requests_per_minute": 1}
    return raw


async def scrape(session: aiohttp.ClientSession, gateway: RunningGateway) -> str:
    texts = []
    for path in ("/metrics", "/readyz", "/healthz"):
        async with session.get(f"{gateway.url}{path}") as resp:
            texts.append(await resp.text())
    async with session.get(f"{gateway.url}/v1/models", headers=auth()) as resp:
        texts.append(await resp.text())
    return "\n".join(texts)


async def test_row_26_canary_in_prompts_headers_and_invalid_fields_never_leaks(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(config(upstream))
    # A second gateway whose Redis is down and which refuses without it.
    down = config(upstream)
    down["rate_limits"] = {
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "failure_mode": "closed",
    }
    down["teams"]["team-a"]["limits"] = {"requests_per_minute": 100}
    no_limiter = await start_gateway(down)
    fake = upstream.state

    async with aiohttp.ClientSession() as session:
        client = Client(session, gateway)
        send = client.send

        # The canary only in headers, on requests that are answered.
        headers = {
            "User-Agent": PHRASE,
            "X-Forwarded-For": TOKEN,
            "Forwarded": f"for={TOKEN}",
            "Referer": f"https://ehr.example/{TOKEN}",
            "Cookie": f"patient={TOKEN}",
            "OpenAI-Organization": TOKEN,
            "OpenAI-Project": TOKEN,
            "X-Patient": PHRASE,
            f"X-{TOKEN}": "1",
            "Accept": f"application/json, text/{TOKEN}",
        }
        assert (
            await send("headers", headers={**auth(), **headers}, json=chat_body())
        ).status == 200
        assert (
            await send("headers-stream", headers={**auth(), **headers}, json=chat_body(stream=True))
        ).status == 200
        assert (
            await send("query", path=f"/v1/chat/completions?patient={TOKEN}", json=chat_body())
        ).status == 200
        # Refused before the body is read: auth, route, method, content type, size.
        for key in (f"Bearer {TOKEN}", f"Bearer {PHRASE}", f"Basic {TOKEN}", TOKEN):
            reply = await send("auth", headers={"Authorization": key}, json=prompt())
            assert reply.status == 401
        assert (await send("path", path=f"/v1/{TOKEN}", json=prompt())).status == 404
        assert (await send("sub-path", path=f"/v1/chat/completions/{TOKEN}")).status == 404
        assert (await send("method", method="PUT", json=prompt())).status == 405
        assert (
            await send(
                "content-type",
                headers={**auth(), "Content-Type": f"text/{TOKEN}"},
                data=json.dumps(prompt()),
            )
        ).status == 400
        assert (
            await send(
                "encoding",
                headers={**auth(), **JSON, "Content-Encoding": TOKEN},
                data=json.dumps(prompt()),
            )
        ).status == 415
        huge = json.dumps(chat_body(messages=[{"role": "user", "content": PHRASE * 30_000}]))
        reply = await send("too-large", headers={**auth(), **JSON}, data=io.BytesIO(huge.encode()))
        assert reply.status == 413
        # Bodies that are not a request, and every kind of invalid field.
        raw_bodies = {
            "truncated-json": f'{{"model": "x", "messages": [{{"content": "{PHRASE}'.encode(),
            "not-utf8": b'{"messages": "\xff' + TOKEN.encode() + b'"}',
            "array": json.dumps([PHRASE]).encode(),
            "string": json.dumps(PHRASE).encode(),
            "lone-surrogate": b'{"model": "\\ud800' + TOKEN.encode() + b'"}',
        }
        for case, raw in raw_bodies.items():
            assert (await send(case, headers={**auth(), **JSON}, data=raw)).status == 400, case
        invalid = {
            "temperature": PHRASE,
            "top_p": TOKEN,
            "max_tokens": TOKEN,
            "n": [PHRASE],
            "stop": {"x": PHRASE},
            "seed": PHRASE,
            "user": {"id": PHRASE},
            "response_format": {"type": TOKEN},
            "logit_bias": {TOKEN: 1},
            "tools": [{"type": "function", "function": {"name": f"{TOKEN} x"}}],
            "tool_choice": {"type": TOKEN},
            "stream_options": {"include_usage": PHRASE},
            "model": PHRASE,
            "messages": PHRASE,
        }
        for param, value in invalid.items():
            reply = await send(f"invalid-{param}", json=prompt(**{param: value}))
            assert reply.status in (400, 404), (param, reply)
        for message in (
            {"role": TOKEN, "content": PHRASE},
            {"role": "user", "content": {TOKEN: PHRASE}},
            {"role": "user", "content": [{"type": TOKEN, "text": PHRASE}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PHRASE}}]},
            {"role": "user", "content": PHRASE, "name": {TOKEN: PHRASE}},
            {"role": "tool", "content": PHRASE},
        ):
            reply = await send("invalid-message", json=chat_body(messages=[message]))
            assert reply.status == 400, (message, reply)

        # The canary in the prompt, down every path after validation.
        assert (await send("answered", json=prompt())).status == 200
        assert (await send("streamed", json=prompt(stream=True))).status == 200
        other = {"Authorization": f"Bearer {OTHER_TEAM_KEY}"}
        limited = prompt(model=OTHER_TEAM_MODEL)
        assert (await send("within-limit", headers=other, json=limited)).status == 200
        assert (await send("rate-limited", headers=other, json=limited)).status == 429
        fake.script.extend([Behavior(status=503)] * 3)
        assert (await send("upstream-503", json=prompt())).status == 503
        fake.script.extend([Behavior(status=429, retry_after="60")])
        assert (await send("upstream-429", json=prompt())).status == 429
        fake.script.extend([Behavior(reset=True)] * 3)
        assert (await send("upstream-reset", json=prompt(stream=True))).status == 503
        fake.script.append(Behavior(hang=True))
        assert (await send("upstream-hangs", json=prompt())).status == 504
        fake.script.append(Behavior(abort_after=1))
        assert (await send("upstream-cut", json=prompt(stream=True))).status == 200
        fake.script.append(Behavior(stall_after=1))
        assert (await send("upstream-stalls", json=prompt(stream=True))).status == 200
        fake.script.append(Behavior(stream_error=500, error_after=1))
        assert (await send("error-in-stream", json=prompt(stream=True))).status == 200
        fake.default = Behavior(delay=0.05)
        await client.leave_mid_stream("client-leaves")
        await wait_for(lambda: len(fake.disconnected) >= 2, 2.0)  # the hang and the leaver
        fake.default = Behavior()
        refused = Client(session, no_limiter)
        assert (await refused.send("limiter-down", json=prompt())).status == 503

        await wait_for(
            lambda: any(a["request_id"] == "client-leaves" for a in gateway.log_records("audit"))
        )
        scraped = await scrape(session, gateway) + await scrape(session, no_limiter)

    # The canary did reach the upstream (the test is not vacuous)...
    assert any(MARK in json.dumps(r.body) for r in fake.requests)
    # ...and nothing else.
    replies = [*client.replies, *refused.replies]
    assert [r.case for r in replies if MARK in r.outside_the_answer()] == []
    # Only where the prompt carried it and the upstream echoed it back, in its answer.
    echoed = {
        "answered",
        "streamed",
        "within-limit",
        "upstream-cut",
        "upstream-stalls",
        "error-in-stream",
        "client-leaves",
    }
    assert {r.case for r in replies if MARK in r.text} <= echoed
    assert MARK in next(r.text for r in replies if r.case == "answered")  # the echo is there
    assert MARK not in scraped
    for running in (gateway, no_limiter):
        assert [line for line in running.log_text().splitlines() if MARK in line] == []
    audits = gateway.log_records("audit")
    assert len(audits) >= 40 and all(MARK not in json.dumps(a) for a in audits)


async def test_row_26_identifier_shaped_input_is_named_only_to_its_sender(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    """The one deliberate exception, as OpenAI does: a plain identifier sent as the model
    (404) or as an unknown parameter's name (400) is named in the error body that goes
    back to the client who sent it, and nowhere else: not in logs, audit or metrics."""
    gateway = await start_gateway(config(upstream))
    async with aiohttp.ClientSession() as session:
        client = Client(session, gateway)
        replies = [
            await client.send("model", json=chat_body(model=TOKEN)),
            await client.send("model-info", method="GET", path=f"/v1/models/{TOKEN}"),
            await client.send("unknown-parameter", json=chat_body(**{TOKEN: 1})),
            await client.send(
                "unknown-message-key",
                json=chat_body(messages=[{"role": "user", "content": "x", TOKEN: 1}]),
            ),
        ]
        scraped = await scrape(session, gateway)

    assert [r.status for r in replies] == [404, 404, 400, 400]
    assert all(MARK in r.text for r in replies)
    assert MARK not in scraped
    assert [line for line in gateway.log_text().splitlines() if MARK in line] == []
