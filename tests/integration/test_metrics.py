"""`GET /metrics` through a real gateway in front of the fake upstream: a scripted mix of
requests moves every counter and histogram by exactly what happened, and no client-chosen
string (model name, key, header) ever becomes a label value."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import STATUS_CODES
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OTHER_TEAM_KEY,
    OTHER_TEAM_MODEL,
    TEAM_KEY,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    config_dict,
    post_chat,
)

P = "llm_gateway_"
Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

# The three requests of the mix that reach the upstream: their prompts, and the fake's
# usage for them (one token per word; the answer is "echo: " plus the prompt).
SUCCESS, RETRIED, STREAMED = "one two three", "four five", "six seven eight nine"
PROMPT_TOKENS = sum(len(text.split()) for text in (SUCCESS, RETRIED, STREAMED))
COMPLETION_TOKENS = sum(len(f"echo: {text}".split()) for text in (SUCCESS, RETRIED, STREAMED))
# team-a may make this many requests per minute: the three above, then a 429.
REQUESTS_PER_MINUTE = 3


async def scrape(gateway: RunningGateway) -> Samples:
    """Every sample of the exposition, by name and sorted labels (`_created` left out),
    once no request is in flight: a stream's client can read its last byte a moment before
    the gateway counts it (the in-flight gauge drops in the same step as the counting)."""
    for _ in range(100):
        samples = _parse(await _exposition(gateway))
        if samples[f"{P}requests_in_flight", ()] == 0:
            return samples
        await asyncio.sleep(0.01)
    raise AssertionError("requests still in flight")


async def _exposition(gateway: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def _parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def moved(before: Samples, after: Samples, name: str) -> dict[Labels, float]:
    """How much each series of one sample name moved (series that did not move left out)."""
    deltas: dict[Labels, float] = {}
    for (sample, series), value in after.items():
        if sample == name:
            delta = value - before.get((sample, series), 0.0)
            if delta:
                deltas[series] = delta
    return deltas


def labels(**values: str) -> Labels:
    return tuple(sorted(values.items()))


async def post(
    gateway: RunningGateway, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    reply = await post_chat(gateway, body, headers or {})
    return reply.status, reply.body


def stream_usage(raw: bytes) -> dict[str, int]:
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", raw
    usage: dict[str, int] = json.loads(events[-2])["usage"]
    return usage


@pytest.fixture
async def limited(start_gateway: StartGateway, upstream: RunningUpstream) -> RunningGateway:
    raw = config_dict(upstream.url)
    raw["teams"]["team-a"]["limits"] = {"requests_per_minute": REQUESTS_PER_MINUTE}
    return await start_gateway(raw)


async def run_mix(gateway: RunningGateway, upstream: RunningUpstream) -> tuple[Samples, Samples]:
    """One success, a 400, a 401, a 404, an upstream 503 retried to success, a stream and a
    429; the exposition before and after."""
    before = await scrape(gateway)
    usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0}

    def add(answer: dict[str, int]) -> None:
        usage["prompt_tokens"] += answer["prompt_tokens"]
        usage["completion_tokens"] += answer["completion_tokens"]

    def prompt(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    status, body = await post(gateway, chat_body(messages=prompt(SUCCESS)), auth())
    assert status == 200, body
    add(json.loads(body)["usage"])

    status, body = await post(gateway, chat_body(temperature=5), auth())
    assert status == 400, body

    status, body = await post(gateway, chat_body(), auth("gw-not-a-key-of-any-team"))
    assert status == 401, body

    status, body = await post(gateway, chat_body(model="no-such-model"), auth())
    assert status == 404, body

    upstream.state.script.append(Behavior(status=503))
    sent = len(upstream.state.requests)
    status, body = await post(gateway, chat_body(messages=prompt(RETRIED)), auth())
    assert status == 200, body
    assert len(upstream.state.requests) - sent == 2  # the 503, then the retry
    add(json.loads(body)["usage"])

    streamed = chat_body(
        messages=prompt(STREAMED), stream=True, stream_options={"include_usage": True}
    )
    status, body = await post(gateway, streamed, auth())
    assert status == 200, body
    add(stream_usage(body))

    status, body = await post(gateway, chat_body(), auth())
    assert status == 429, body
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"

    # What the fake reported is what the test expects the counters to add.
    assert usage == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
    return before, await scrape(gateway)


async def test_a_scripted_mix_moves_each_metric_by_exactly_what_happened(
    limited: RunningGateway, upstream: RunningUpstream
) -> None:
    before, after = await run_mix(limited, upstream)

    def requests(team: str, model: str, upstream: str, code: str) -> Labels:
        return labels(team=team, model=model, upstream=upstream, code=code)

    assert moved(before, after, f"{P}requests_total") == {
        # the success, the retried call and the stream, each counted once
        requests("team-a", MODEL, "fake", "200"): 3,
        # the bad parameter and the unknown model: the team is known, the model is not
        requests("team-a", "none", "none", "400"): 1,
        requests("team-a", "none", "none", "404"): 1,
        # the bad key: nothing is known
        requests("none", "none", "none", "401"): 1,
        # the 429: refused before any upstream was picked
        requests("team-a", MODEL, "none", "429"): 1,
    }
    assert moved(before, after, f"{P}request_duration_seconds_count") == {
        labels(team="team-a", model=MODEL): 4,
        labels(team="team-a", model="none"): 2,
        labels(team="none", model="none"): 1,
    }
    assert moved(before, after, f"{P}time_to_first_token_seconds_count") == {
        labels(team="team-a", model=MODEL): 1
    }
    assert moved(before, after, f"{P}tokens_total") == {
        labels(team="team-a", model=MODEL, kind="prompt"): PROMPT_TOKENS,
        labels(team="team-a", model=MODEL, kind="completion"): COMPLETION_TOKENS,
    }
    assert moved(before, after, f"{P}rate_limited_requests_total") == {
        labels(team="team-a", model=MODEL, limit="requests"): 1
    }
    assert moved(before, after, f"{P}upstream_retries_total") == {
        labels(model=MODEL, upstream="fake", reason="unavailable"): 1
    }
    for quiet in (
        "upstream_retries_over_budget_total",
        "upstream_ejections_total",
        "safety_verdicts_total",
        "rate_limiter_errors_total",
        "rate_limiter_fail_open_total",
        "requests_in_flight",
    ):
        assert moved(before, after, P + quiet) == {}, quiet
    assert after[f"{P}requests_in_flight", ()] == 0
    assert after[f"{P}upstream_healthy", labels(upstream="fake")] == 1

    # Each histogram: the +Inf bucket moved with the count, the sum by something positive.
    for histogram in (
        "request_duration_seconds",
        "time_to_first_token_seconds",
    ):
        counts = moved(before, after, f"{P}{histogram}_count")
        sums = moved(before, after, f"{P}{histogram}_sum")
        infinite = {
            tuple(pair for pair in series if pair[0] != "le"): delta
            for series, delta in moved(before, after, f"{P}{histogram}_bucket").items()
            if ("le", "+Inf") in series
        }
        assert infinite == counts, histogram
        assert sums.keys() == counts.keys(), histogram
        assert all(value > 0 for value in sums.values()), histogram


async def test_the_mix_records_every_upstream_attempt_by_outcome(
    limited: RunningGateway, upstream: RunningUpstream
) -> None:
    before, after = await run_mix(limited, upstream)
    attempts = moved(before, after, f"{P}upstream_attempt_duration_seconds_count")
    # Four attempts, all on the one upstream of the model: the success, the 503 and its
    # retry, the stream. Three succeeded, one failed.
    assert {dict(series)["upstream"] for series in attempts} == {"fake"}
    by_outcome = {dict(series)["outcome"]: count for series, count in attempts.items()}
    assert by_outcome == {"ok": 3, "error": 1}, attempts


async def test_client_strings_never_become_label_values(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    token = uuid.uuid4().hex
    odd_headers = {
        "x-request-id": f"req-{token}",
        "User-Agent": f"evil-agent/{token}",
        "X-Team": token,
        "X-Model": token,
        "X-Upstream": token,
        "OpenAI-Organization": f"org-{token}",
    }
    calls: list[tuple[Any, dict[str, str]]] = [
        # unknown models, whole and streamed, plain and with characters the exposition escapes
        (chat_body(model=f"evil-model-{token}"), auth()),
        (chat_body(model=f"evil-model-{token}", stream=True), auth()),
        (chat_body(model=f'evil"model\\{token}\n'), auth()),
        # a model that exists but is another team's
        (chat_body(model=OTHER_TEAM_MODEL), auth()),
        (chat_body(), auth(OTHER_TEAM_KEY)),
        # bad keys, in and out of the Bearer form
        (chat_body(), {"Authorization": f"Bearer evil-key-{token}"}),
        (chat_body(), {"Authorization": f"Basic {token}"}),
        (chat_body(), {"Authorization": f"Bearer {TEAM_KEY}{token}"}),
        # a good request (by alias) with odd headers and client strings in the body
        (chat_body(model="llama-8b", user=f"user-{token}"), {**auth(), **odd_headers}),
        (chat_body(model=f"evil-model-{token}"), {**auth(), **odd_headers}),
        (chat_body(safety_model=f"evil-safety-{token}"), auth()),
        # a body that is not a request
        ({"model": f"evil-model-{token}"}, auth()),
    ]
    statuses = [(await post(gateway, body, headers))[0] for body, headers in calls]
    assert statuses[0:5] == [404, 404, 404, 404, 404]
    assert statuses[5:8] == [401, 401, 401]
    assert statuses[8:10] == [200, 404]
    assert statuses[11] == 400
    async with aiohttp.ClientSession() as session:
        for path in (f"/v1/evil-{token}", f"/v1/models?team={token}"):
            async with session.get(f"{gateway.url}{path}", headers=odd_headers) as resp:
                assert resp.status in (401, 404)

    samples = await scrape(gateway)
    assert token not in await _exposition(gateway)
    config = gateway.config
    allowed = {
        "team": {*config.teams, "none"},
        "model": {*config.models, "none"},
        "upstream": {*config.upstreams, "none"},
        "code": STATUS_CODES | {"other"},
    }
    seen: dict[str, set[str]] = {}
    for _, series in samples:
        for name, value in series:
            assert token not in value, (name, value)
            seen.setdefault(name, set()).add(value)
    for name, values in allowed.items():
        assert seen[name] <= values, (name, seen[name] - values)
    # The alias was counted under the model's configured name.
    assert samples[
        f"{P}requests_total",
        labels(team="team-a", model=MODEL, upstream="fake", code="200"),
    ] == statuses.count(200)
    assert seen["code"] >= {"200", "400", "401", "404"}
