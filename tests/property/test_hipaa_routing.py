"""Property: a request under HIPAA never reaches an upstream that is not HIPAA-eligible.

Over generated configurations (one model on 1-4 upstreams drawn from a pool of fake
servers, each eligible or not, with random weights and dialects, failing or not; an
optional safety model on its own upstreams; HIPAA forced by a team policy or asked for by
the client, or neither; streamed or not; any number of attempts), every upstream call made
for the request (the generation and the safety check alike, matched by the request id the
gateway forwards) lands on an eligible upstream; a model with no eligible upstream answers
400 `hipaa_unavailable` before anything is sent anywhere; and the request's single audit
line says which compliance regime applied.

An upstream counts as eligible only when it is `hipaa_eligible` and, being plain http on
loopback here, `security.allow_plaintext_loopback_hipaa` is set (route.py)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.app import build_app
from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import Behavior, FakeUpstream
from tests.conftest import TEAM_KEY, UPSTREAM_KEY, UPSTREAM_KEY_ENV, auth, make_config

POOL_SIZE = 4
MODEL = "phi-model"
GUARD = "guard-model"  # the fake answers like Llama Guard for an upstream model named *guard*
TEAM = "clinic"

BEHAVIORS = {
    "healthy": Behavior(),
    "503": Behavior(status=503),
    "429": Behavior(status=429),
    "reset": Behavior(reset=True),
}


@dataclass
class Pool:
    """Fake upstream servers that outlive the examples, and the loop that serves them."""

    runner: asyncio.Runner = field(repr=False)
    fakes: list[FakeUpstream] = field(repr=False)
    servers: list[TestServer] = field(repr=False)

    def url(self, index: int) -> str:
        return str(self.servers[index].make_url("/v1")).rstrip("/")


@pytest.fixture
def pool() -> Iterator[Pool]:
    # A loop of the test's own: every example runs to completion on it, the fake servers
    # stay up between examples, and nothing depends on how pytest-asyncio drives
    # hypothesis.
    runner = asyncio.Runner()
    fakes = [FakeUpstream(api_key=UPSTREAM_KEY) for _ in range(POOL_SIZE)]
    servers = [TestServer(fake.app()) for fake in fakes]

    async def start() -> None:
        for server in servers:
            await server.start_server()

    async def stop() -> None:
        for server in servers:
            await server.close()

    runner.run(start())
    try:
        yield Pool(runner, fakes, servers)
    finally:
        runner.run(stop())
        runner.close()


@dataclass(frozen=True)
class Case:
    eligible: tuple[bool, ...]  # per pool upstream: hipaa_eligible in the config
    dialects: tuple[str, ...]  # per pool upstream
    behaviors: tuple[str, ...]  # per pool upstream: its fake's default behavior
    model_upstreams: tuple[tuple[int, float], ...]  # (pool index, weight)
    guard_upstreams: tuple[tuple[int, float], ...]  # empty: no safety policy
    guard_on_unavailable: str
    plaintext_loopback_ok: bool
    force_hipaa: bool
    client_hipaa: bool
    stream: bool
    max_attempts: int
    consecutive_failures: int

    @property
    def under_hipaa(self) -> bool:
        return self.force_hipaa or self.client_hipaa

    def counts_as_eligible(self, index: int) -> bool:
        return self.eligible[index] and self.plaintext_loopback_ok


def _upstream_sets(min_size: int) -> st.SearchStrategy[tuple[tuple[int, float], ...]]:
    return st.lists(
        st.tuples(
            st.integers(0, POOL_SIZE - 1),
            st.sampled_from([0.1, 0.5, 1.0, 2.0, 10.0]),
        ),
        min_size=min_size,
        max_size=POOL_SIZE,
        unique_by=lambda pair: pair[0],
    ).map(tuple)


cases = st.builds(
    Case,
    eligible=st.tuples(*[st.booleans()] * POOL_SIZE),
    dialects=st.tuples(*[st.sampled_from(["openai", "together", "vllm", "anthropic"])] * POOL_SIZE),
    behaviors=st.tuples(*[st.sampled_from(sorted(BEHAVIORS))] * POOL_SIZE),
    model_upstreams=_upstream_sets(1),
    guard_upstreams=st.one_of(st.just(()), _upstream_sets(1)),
    guard_on_unavailable=st.sampled_from(["refuse", "proceed"]),
    # Mostly true: without it no plain-http upstream is eligible at all.
    plaintext_loopback_ok=st.sampled_from([True] * 7 + [False]),
    force_hipaa=st.booleans(),
    client_hipaa=st.booleans(),
    stream=st.booleans(),
    max_attempts=st.integers(1, 4),
    consecutive_failures=st.integers(1, 5),
)


def gateway_config(case: Case, pool: Pool) -> dict[str, Any]:
    upstreams = {
        f"up{i}": {
            "base_url": pool.url(i),
            "dialect": case.dialects[i],
            "api_key_env": UPSTREAM_KEY_ENV,
            "hipaa_eligible": case.eligible[i],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5, "total": 10},
        }
        for i in range(POOL_SIZE)
    }
    models: dict[str, Any] = {
        MODEL: {
            "upstreams": [
                {"upstream": f"up{i}", "weight": weight} for i, weight in case.model_upstreams
            ]
        }
    }
    policies: dict[str, Any] = {"h": {"compliance": {"force": "hipaa"}}}
    team_policies = ["h"] if case.force_hipaa else []
    if case.guard_upstreams:
        models[GUARD] = {
            "upstreams": [
                {"upstream": f"up{i}", "model": "llama-guard", "weight": weight}
                for i, weight in case.guard_upstreams
            ]
        }
        policies["s"] = {"safety": {"model": GUARD, "on_unavailable": case.guard_on_unavailable}}
        team_policies.append("s")
    return {
        "server": {"log_format": "json", "log_level": "debug"},
        "security": {"allow_plaintext_loopback_hipaa": case.plaintext_loopback_ok},
        "upstreams": upstreams,
        "models": models,
        "teams": {
            TEAM: {"key_hashes": [hash_key(TEAM_KEY)], "models": [MODEL], "policies": team_policies}
        },
        "policies": policies,
        "retries": {
            "max_attempts": case.max_attempts,
            "backoff_base_ms": 1,
            "backoff_max_ms": 2,
        },
        "health": {"consecutive_failures": case.consecutive_failures},
    }


@dataclass
class Outcome:
    status: int
    body: bytes
    log: str


async def run_case(case: Case, pool: Pool, request_id: str) -> Outcome:
    for index, fake in enumerate(pool.fakes):
        fake.default = BEHAVIORS[case.behaviors[index]]
        fake.script.clear()
        fake.requests.clear()
        fake.disconnected.clear()
    log = io.StringIO()
    gateway = TestServer(build_app(make_config(gateway_config(case, pool)), log_stream=log))
    await gateway.start_server()
    try:
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "patient notes, do not leak"}],
            "max_tokens": 16,
        }
        if case.stream:
            body["stream"] = True
        if case.client_hipaa:
            body["compliance"] = "hipaa"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.make_url("/v1/chat/completions"),
                json=body,
                headers={**auth(), "x-request-id": request_id},
            ) as resp,
        ):
            status, raw = resp.status, await resp.read()
    finally:
        # Closing waits for the request's handler: its audit line is written by then.
        await gateway.close()
    return Outcome(status, raw, log.getvalue())


_request_ids = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases)
def test_requests_under_hipaa_reach_only_eligible_upstreams(case: Case, pool: Pool) -> None:
    request_id = f"hipaa-prop-{next(_request_ids)}"
    outcome = pool.runner.run(run_case(case, pool, request_id))

    event(f"under HIPAA: {case.under_hipaa}, status {outcome.status}")
    recorded = [(i, r) for i, fake in enumerate(pool.fakes) for r in fake.requests]
    # Every upstream call of the example belongs to the request (nothing escapes the match).
    assert all(r.headers.get("x-request-id") == request_id for _, r in recorded), recorded
    reached = sorted({i for i, _ in recorded})
    configured = {i for i, _ in (*case.model_upstreams, *case.guard_upstreams)}
    assert set(reached) <= configured
    event(f"upstream calls: {min(len(recorded), 3)}{'+' if len(recorded) >= 3 else ''}")

    no_eligible_upstream = not any(case.counts_as_eligible(i) for i, _ in case.model_upstreams)
    if case.under_hipaa:
        not_eligible = [i for i in reached if not case.counts_as_eligible(i)]
        assert not not_eligible, (
            f"a request under HIPAA reached non-eligible upstream(s) {not_eligible}; "
            f"status {outcome.status}"
        )
        if no_eligible_upstream:
            assert outcome.status == 400, outcome.body
            assert json.loads(outcome.body)["error"]["code"] == "hipaa_unavailable"
            assert reached == []

    audits = [
        record
        for record in map(json.loads, outcome.log.splitlines())
        if record.get("event") == "audit" and record.get("request_id") == request_id
    ]
    assert len(audits) == 1, audits
    assert audits[0]["status"] == outcome.status
    assert audits[0]["team"] == TEAM
    assert audits[0]["compliance"] == ("hipaa" if case.under_hipaa else "none"), (
        audits[0],
        outcome.status,
        outcome.body,
    )


@pytest.mark.parametrize("forced", [False, True], ids=["client-asks", "policy-forces"])
def test_hipaa_unavailable_is_audited_as_hipaa(pool: Pool, forced: bool) -> None:
    """The refusal itself is audited under HIPAA, whether the client asked or a policy
    forced it (the property covers it too; this pins the case found by it)."""
    case = Case(
        eligible=(False,) * POOL_SIZE,
        dialects=("openai",) * POOL_SIZE,
        behaviors=("healthy",) * POOL_SIZE,
        model_upstreams=((0, 1.0),),
        guard_upstreams=(),
        guard_on_unavailable="refuse",
        plaintext_loopback_ok=True,
        force_hipaa=forced,
        client_hipaa=not forced,
        stream=False,
        max_attempts=1,
        consecutive_failures=5,
    )
    request_id = f"hipaa-unavailable-{forced}"
    outcome = pool.runner.run(run_case(case, pool, request_id))

    assert outcome.status == 400
    assert json.loads(outcome.body)["error"]["code"] == "hipaa_unavailable"
    assert not any(fake.requests for fake in pool.fakes)
    audits = [
        record
        for record in map(json.loads, outcome.log.splitlines())
        if record.get("event") == "audit" and record.get("request_id") == request_id
    ]
    assert len(audits) == 1
    assert audits[0]["compliance"] == "hipaa"
