"""The request path is one list of stages, in the documented order, and the per-request
exchange keeps its rule: each field is written by exactly one stage (the one named beside
it), and no stage edits a request another stage produced.

A watching wrapper around every stage of a live gateway records which fields each stage
changed while a mix of requests runs through: answered whole and streamed, truncated and
clamped, checked by a safety model, refused by validation, routing, policy and the rate
limit."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from typing import Any

import aiohttp

from gateway.appkeys import PATHS
from gateway.pipeline import Exchange, Pipeline, Stage
from gateway.stages.auth import hash_key
from tests.conftest import (
    OPENAI_MODEL,
    TEAM_KEY,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    add_safety_model,
    auth,
    chat_body,
    config_dict,
    post_chat,
)

CHAT_ORDER = [
    "audit",
    "metrics",
    "auth",
    "validate",
    "route",
    "policy",
    "audit_gate",
    "context_length",
    "translate",
    "rate_limit",
    "safety",
    "upstream",
    "answer_safety",
    "relay",
]

OWNER = {
    "team": "auth",
    "auth_failure": "auth",
    "request": "validate",
    "route": "route",
    "hipaa_decision": "policy",
    "policy": "policy",
    "fitted": "context_length",
    "translation": "translate",
    "admission": "rate_limit",
    "safety_verdict": "safety",
    "call": "upstream",
    "answer": "upstream",
    "answer_verdict": "answer_safety",
    "relayed": "relay",
    "response": "relay",
    "error": "(pipeline)",
    "aborted": "(pipeline)",
}
GUARD = "llama-guard-path"
LIMITED_KEY = "gw-test-limited-team-key-555566667777"


def pipeline_of(gateway: RunningGateway, name: str) -> Pipeline:
    """One of the paths in force (the generation new requests run on)."""
    pipeline: Pipeline = getattr(gateway.server.app[PATHS].current, name)
    return pipeline


def test_the_chat_path_is_the_documented_list_in_order(gateway: RunningGateway) -> None:
    assert pipeline_of(gateway, "chat").names == CHAT_ORDER
    assert pipeline_of(gateway, "model_list").names == [
        "audit",
        "metrics",
        "auth",
        "audit_gate",
        "list_models",
    ]
    assert pipeline_of(gateway, "model_info").names == [
        "audit",
        "metrics",
        "auth",
        "audit_gate",
        "retrieve_model",
    ]


def _state(exchange: Exchange) -> dict[str, Any]:
    """Each field's identity, or for the records stages fill in place, their contents."""
    state: dict[str, Any] = {}
    for name in OWNER:
        value = getattr(exchange, name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and not _frozen(value):
            state[name] = dataclasses.astuple(value)
        else:
            state[name] = (id(value), value if isinstance(value, bool | str | None) else None)
    return state


def _frozen(value: Any) -> bool:
    params = getattr(type(value), "__dataclass_params__", None)
    return bool(params and params.frozen)


class Watch(Stage):
    def __init__(self, inner: Stage, writes: dict[str, set[str]], edits: list[str]) -> None:
        self.name = inner.name
        self._inner = inner
        self._writes = writes
        self._edits = edits

    async def enter(self, exchange: Exchange) -> None:
        before = _state(exchange)
        requests = _requests(exchange)
        try:
            await self._inner.enter(exchange)
        finally:
            self._note(before, exchange, requests)

    def leave(self, exchange: Exchange) -> None:
        before = _state(exchange)
        requests = _requests(exchange)
        try:
            self._inner.leave(exchange)
        finally:
            self._note(before, exchange, requests)

    def _note(self, before: dict[str, Any], exchange: Exchange, requests: list[Any]) -> None:
        after = _state(exchange)
        for name in OWNER:
            if before[name] != after[name]:
                self._writes.setdefault(name, set()).add(self.name)
        # A request that existed before the stage ran must read the same after it.
        if any(request.model_dump() != dump for request, dump in requests):
            self._edits.append(self.name)


def _requests(exchange: Exchange) -> list[tuple[Any, dict[str, Any]]]:
    """The request values the stages produced so far, each with its contents now."""
    values = [exchange.request]
    if exchange.policy is not None:
        values.append(exchange.policy.request)
    if exchange.fitted is not None:
        values.append(exchange.fitted.request)
    return [(value, value.model_dump()) for value in values if value is not None]


async def test_every_exchange_field_has_one_writer_and_no_stage_edits_a_request(
    start_gateway: StartGateway, upstream: RunningUpstream, spare_upstream: RunningUpstream
) -> None:
    raw = config_dict(upstream.url)
    add_safety_model(raw, spare_upstream.url, GUARD)
    raw["models"][OPENAI_MODEL]["context_window"] = 60
    raw["policies"] = {
        "checked": {
            "safety": {"model": GUARD, "check_output": True},
            "caps": {"max_tokens": {"limit": 8, "action": "clamp"}, "n": {"limit": 1}},
        }
    }
    raw["teams"]["team-a"]["policies"] = ["checked"]
    raw["teams"]["limited"] = {
        "key_hashes": [hash_key(LIMITED_KEY)],
        "models": [OPENAI_MODEL],
        "limits": {"requests_per_minute": 1},
    }
    gateway = await start_gateway(raw)
    writes: dict[str, set[str]] = {}
    edits: list[str] = []
    chat = pipeline_of(gateway, "chat")
    chat.stages = tuple(Watch(stage, writes, edits) for stage in chat.stages)

    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "an old question " * 20},
        {"role": "assistant", "content": "an old answer " * 20},
        {"role": "user", "content": "hello"},
    ]
    truncating = chat_body(
        model=OPENAI_MODEL,
        messages=history,
        max_tokens=50,
        context_length_exceeded_behavior="truncate",
    )
    replies = [
        await post_chat(gateway, truncating),
        await post_chat(gateway, {**truncating, "stream": True}),
        await post_chat(gateway, chat_body(model=OPENAI_MODEL, temperature=3)),
        await post_chat(gateway, chat_body(model="no-such-model")),
        await post_chat(gateway, chat_body(model=OPENAI_MODEL, n=2)),
        await post_chat(gateway, chat_body(model=OPENAI_MODEL), auth("gw-not-a-key-123456789")),
        await post_chat(gateway, chat_body(model=OPENAI_MODEL), auth(LIMITED_KEY)),
        await post_chat(gateway, chat_body(model=OPENAI_MODEL), auth(LIMITED_KEY)),
    ]

    assert [reply.status for reply in replies] == [200, 200, 400, 404, 400, 401, 200, 429]
    assert replies[0].headers["x-gateway-clamped-params"] == "max_tokens"
    assert replies[0].headers["x-gateway-truncated-messages"] == "2"
    # The safety model saw the first answer's input and output, and the stream's input.
    assert len(spare_upstream.state.requests) == 3
    assert {name: sorted(stages) for name, stages in writes.items()} == {
        name: [OWNER[name]] for name in OWNER if not OWNER[name].startswith("(")
    }
    assert edits == []


async def test_the_model_endpoints_run_their_own_short_paths(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession(headers=auth(TEAM_KEY)) as session:
        async with session.get(f"{gateway.url}/v1/models") as listed:
            assert listed.status == 200
        async with session.get(f"{gateway.url}/v1/models/{OPENAI_MODEL}") as one:
            assert (one.status, (await one.json())["id"]) == (200, OPENAI_MODEL)

    audits = gateway.log_records("audit")
    assert [(a["method"], a["status"], a["team"]) for a in audits] == [
        ("GET", 200, "team-a"),
        ("GET", 200, "team-a"),
    ]


async def test_an_exchange_is_freed_with_its_request_without_the_garbage_collector(
    gateway: RunningGateway,
) -> None:
    gc.collect()
    gc.disable()
    try:
        for body in (chat_body(), chat_body(stream=True), chat_body(model="no-such-model")):
            assert (await post_chat(gateway, body)).status in (200, 404)
        await asyncio.sleep(0.05)  # the server's side of the last request ends
        alive = [o for o in gc.get_objects() if isinstance(o, Exchange)]
    finally:
        gc.enable()

    assert alive == []  # no reference cycle keeps a request and its exchange around
