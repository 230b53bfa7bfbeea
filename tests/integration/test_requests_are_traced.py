"""OpenTelemetry traces, as a collector gets them (an OTLP/HTTP receiver of the tests' own,
decoding the protobuf): one server span per request, named and described by the GenAI
semantic conventions, continuing the client's W3C trace; child spans for the rate limit,
the safety check, the wait in line and each upstream attempt (its outcome, why it was a
retry); the trace context sent on to the upstream names the attempt's span. No span holds
message content or a key. Off (the default), nothing is traced and nothing sent."""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.appkeys import PATHS
from gateway.config import parse_config
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    TEAM_KEY,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    UPSTREAM_MODEL,
    RunningGateway,
    RunningUpstream,
    StartGateway,
    add_safety_model,
    config_dict,
    post_chat,
    sdk_for,
)
from tests.integration.capacity import capacity_config, client_session, post
from tests.integration.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver

CANARY = "canary-" + secrets.token_hex(8)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with otlp_receiver() as running:
        yield running


def traced(raw: dict[str, Any], receiver: OtlpReceiver, **tracing: Any) -> dict[str, Any]:
    # A queue smaller than the SDK's default batch (512), which the SDK would refuse.
    raw["tracing"] = {
        "endpoint": receiver.endpoint,
        "export_delay_ms": 20,
        "max_queue": 64,
        **tracing,
    }
    return raw


def client_trace() -> tuple[str, str, str]:
    """A client's sampled trace: its trace id, its span id and the `traceparent` naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


async def own_gateway(raw: dict[str, Any], **environ: str) -> RunningGateway:
    """A gateway on `raw` (read with `environ` besides the upstream key) that the test
    stops itself: `server.close()` sends the spans it still holds."""
    config = parse_config(raw, environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY, **environ})
    server = TestServer(build_app(config, log_stream=io.StringIO()))
    await server.start_server()
    return RunningGateway(server, io.StringIO(), config)


def sampled(traceparent: str) -> bool:
    """The W3C flags' sampled bit (other bits, such as level 2's random-id, may be set)."""
    return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)


def sent_traceparents(upstream: RunningUpstream) -> list[str]:
    return [request.headers.get("traceparent", "") for request in upstream.state.requests]


def assert_nothing_secret(receiver: OtlpReceiver) -> None:
    """Neither the prompt's canary nor any key, in any export, decoded or not."""
    assert receiver.bodies
    for body in receiver.bodies:
        for secret in (CANARY, TEAM_KEY, UPSTREAM_KEY):
            assert secret.encode() not in body
    for span in receiver.spans:
        for value in span.attributes.values():
            assert CANARY not in str(value)


def names(spans: list[ReceivedSpan]) -> list[str]:
    return [span.name for span in spans]


async def test_a_request_continues_the_clients_trace_into_the_upstream(
    start_gateway: StartGateway, upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    gateway = await start_gateway(traced(config_dict(upstream.url), receiver))
    trace_id, client_span, traceparent = client_trace()

    async with sdk_for(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"hello {CANARY}"}],
            extra_headers={"traceparent": traceparent, "tracestate": "vendor=abc"},
        )
    server = await receiver.wait_for_server_span(trace_id)

    assert server.parent_span_id == client_span  # the client's span is its parent
    assert server.name == f"chat {MODEL}"
    assert completion.usage is not None
    assert server.attributes == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL,
        "gen_ai.usage.input_tokens": completion.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": completion.usage.completion_tokens,
        "llm_gateway.team": "team-a",
        "llm_gateway.request_id": server.attributes["llm_gateway.request_id"],
        "llm_gateway.outcome": "ok",
        "llm_gateway.upstream": "fake",
        "llm_gateway.attempts": 1,
        "llm_gateway.stream": False,
    }
    assert server.status == "STATUS_CODE_UNSET"
    assert server.resource["service.name"] == "llm-gateway"
    children = receiver.children(server)
    # No policy asks for a safety check here: no span for those stages.
    assert names(children) == ["rate_limit", f"chat {UPSTREAM_MODEL}"]
    attempt = children[1]
    assert attempt.kind == "SPAN_KIND_CLIENT"
    assert attempt.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": UPSTREAM_MODEL,
        "gen_ai.provider.name": "together",
        "llm_gateway.upstream": "fake",
        "llm_gateway.attempt": 1,
        "llm_gateway.attempt.outcome": "ok",
        "http.response.status_code": 200,
        "server.address": "127.0.0.1",
        "server.port": upstream.server.port,
    }
    # The upstream continues the same trace, under the attempt's span; tracestate passed on.
    sent = upstream.state.requests[-1].headers
    assert sent["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"
    assert sent["tracestate"] == "vendor=abc"
    assert all(
        server.start_ns <= span.start_ns <= span.end_ns <= server.end_ns for span in children
    )
    assert_nothing_secret(receiver)


async def test_a_retried_request_has_a_span_per_attempt_with_the_retry_reason(
    start_gateway: StartGateway, upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    gateway = await start_gateway(traced(config_dict(upstream.url), receiver))
    upstream.state.script.append(Behavior(status=503))
    trace_id, _, traceparent = client_trace()

    reply = await post_chat(
        gateway,
        {"model": MODEL, "messages": [{"role": "user", "content": CANARY}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}", "traceparent": traceparent},
    )
    server = await receiver.wait_for_server_span(trace_id)

    assert reply.status == 200
    assert server.attributes["llm_gateway.attempts"] == 2
    first, second = [s for s in receiver.children(server) if s.kind == "SPAN_KIND_CLIENT"]
    assert first.attributes["llm_gateway.attempt"] == 1
    assert first.attributes["llm_gateway.attempt.outcome"] == "failed"
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "UpstreamUnavailable"
    assert "llm_gateway.retry.reason" not in first.attributes
    assert first.status == "STATUS_CODE_ERROR"
    assert first.events == 0  # no exception recorded: its message could quote the upstream
    assert second.attributes["llm_gateway.attempt"] == 2
    assert second.attributes["llm_gateway.retry.reason"] == "unavailable"
    assert second.attributes["llm_gateway.attempt.outcome"] == "ok"
    assert first.end_ns <= second.start_ns
    # Each try told the upstream its own span.
    assert sent_traceparents(upstream) == [
        f"00-{trace_id}-{first.span_id}-01",
        f"00-{trace_id}-{second.span_id}-01",
    ]
    assert_nothing_secret(receiver)


async def test_a_stream_is_traced_to_its_end_with_its_usage(
    start_gateway: StartGateway, upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    gateway = await start_gateway(traced(config_dict(upstream.url), receiver))
    upstream.state.default = Behavior(delay=0.02)
    trace_id, _, traceparent = client_trace()

    async with sdk_for(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"one two three {CANARY}"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"traceparent": traceparent},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
    server = await receiver.wait_for_server_span(trace_id)

    assert usage is not None
    assert server.attributes["llm_gateway.stream"] is True
    assert server.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    (attempt,) = [s for s in receiver.children(server) if s.kind == "SPAN_KIND_CLIENT"]
    assert attempt.attributes["llm_gateway.attempt.outcome"] == "ok"
    # The attempt ends at the stream's first event; the request, at its last (4 events of
    # 20 ms after the first).
    assert server.end_ns - attempt.end_ns >= 3 * 20_000_000
    assert_nothing_secret(receiver)


async def test_a_refused_request_is_traced_with_its_error(
    start_gateway: StartGateway, upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    gateway = await start_gateway(traced(config_dict(upstream.url), receiver))
    trace_id, _, traceparent = client_trace()

    async with sdk_for(gateway) as sdk:
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(
                model=f"no-such-model-{CANARY}",
                messages=[{"role": "user", "content": CANARY}],
                extra_headers={"traceparent": traceparent},
            )
    server = await receiver.wait_for_server_span(trace_id)

    assert server.name == "POST /v1/chat/completions"  # no model: the client's is not named
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["error.type"] == "model_not_found"
    assert "gen_ai.request.model" not in server.attributes
    assert server.status == "STATUS_CODE_UNSET"  # a client's error, not the server's
    assert receiver.children(server) == []
    assert upstream.state.requests == []
    assert_nothing_secret(receiver)


async def test_a_wait_in_line_for_capacity_has_its_span(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    receiver: OtlpReceiver,
) -> None:
    raw = capacity_config(upstream, spare_upstream, 1, 0.2)
    raw["models"][MODEL]["upstreams"] = raw["models"][MODEL]["upstreams"][:1]
    gateway = await start_gateway(traced(raw, receiver))

    async with client_session() as session:
        await asyncio.gather(post(session, gateway, "team-a"), post(session, gateway, "team-a"))
    await wait_for_spans(receiver, 2)

    servers = [s for s in receiver.spans if s.kind == "SPAN_KIND_SERVER"]
    waits = [
        (server, child)
        for server in servers
        for child in receiver.children(server)
        if child.name == "queue_wait"
    ]
    assert len(waits) == 1  # the second waited for the first's slot
    server, wait = waits[0]
    assert wait.attributes == {"llm_gateway.queue.outcome": "served"}
    assert wait.end_ns - wait.start_ns >= 150_000_000
    assert float(server.attributes["llm_gateway.queue_wait_ms"]) >= 150
    (attempt,) = [s for s in receiver.children(server) if s.kind == "SPAN_KIND_CLIENT"]
    assert wait.end_ns <= attempt.start_ns


async def wait_for_spans(receiver: OtlpReceiver, servers: int) -> None:
    for _ in range(500):
        if sum(s.kind == "SPAN_KIND_SERVER" for s in receiver.spans) >= servers:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server spans never arrived")


async def test_sampling_keeps_a_share_of_new_traces_and_follows_the_clients_decision(
    start_gateway: StartGateway, upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    gateway = await start_gateway(traced(config_dict(upstream.url), receiver, sample_ratio=0))
    sampled_id, _, kept_parent = client_trace()
    unsampled_id, _, unsampled = client_trace()

    for headers in ({}, {"traceparent": unsampled[:-2] + "00"}, {"traceparent": kept_parent}):
        reply = await post_chat(
            gateway,
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {TEAM_KEY}", **headers},
        )
        assert reply.status == 200
    await receiver.wait_for_server_span(sampled_id)  # the client sampled it: kept

    new, declined, kept = sent_traceparents(upstream)
    # The new trace was not kept (ratio 0), yet its context still went on, unsampled.
    assert new.startswith("00-") and not sampled(new)
    assert declined.startswith(f"00-{unsampled_id}-") and not sampled(declined)
    assert kept.startswith(f"00-{sampled_id}-") and sampled(kept)
    exported = {span.trace_id for span in receiver.spans}
    assert exported == {sampled_id}


async def test_without_tracing_nothing_is_traced_or_sent_on(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    _, _, traceparent = client_trace()
    reply = await post_chat(
        gateway,
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}", "traceparent": traceparent},
    )

    assert reply.status == 200
    assert "traceparent" not in upstream.state.requests[-1].headers
    paths = gateway.server.app[PATHS].current
    assert "trace" not in paths.chat.names
    assert not any(type(stage).__name__ == "Traced" for stage in paths.chat.stages)


async def test_export_headers_from_the_environment_reach_the_collector(
    upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    raw = traced(config_dict(upstream.url), receiver, headers_env="OTLP_HEADERS")
    gateway = await own_gateway(raw, OTLP_HEADERS="x-api-key=collector-key")
    try:
        trace_id, _, traceparent = client_trace()
        reply = await post_chat(
            gateway,
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {TEAM_KEY}", "traceparent": traceparent},
        )
        assert reply.status == 200
        await receiver.wait_for_server_span(trace_id)
    finally:
        await gateway.server.close()

    assert {headers.get("x-api-key") for headers in receiver.headers} == {"collector-key"}


async def test_stopping_waits_for_a_silent_collector_at_most_the_export_timeout(
    upstream: RunningUpstream,
) -> None:
    silent = TestServer(hanging_collector())
    await silent.start_server()
    raw = config_dict(upstream.url)
    endpoint = str(silent.make_url("")).rstrip("/")
    raw["tracing"] = {"endpoint": endpoint, "export_delay_ms": 60_000, "export_timeout_s": 1}
    gateway = await own_gateway(raw)
    # About 1,250 spans: three batches of the SDK's 512, each export of which would hang
    # for the export timeout.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(25):
        replies = await asyncio.gather(*(post_chat(gateway, body) for _ in range(10)))
        assert [reply.status for reply in replies] == [200] * 10

    started = time.monotonic()
    await gateway.server.close()  # the spans' export hangs: given up after the export timeout
    took = time.monotonic() - started
    await silent.close()

    assert took < 1 + 1.5, took  # not the SDK's own 30 s


def hanging_collector() -> web.Application:
    async def never_answers(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/v1/traces", never_answers)
    return app


async def test_a_safety_check_has_its_span_with_its_verdict(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    receiver: OtlpReceiver,
) -> None:
    raw = config_dict(upstream.url)
    add_safety_model(raw, spare_upstream.url, "llama-guard-test")
    raw["policies"] = {"guarded": {"safety": {"model": "llama-guard-test", "check_output": True}}}
    raw["teams"]["team-a"]["policies"] = ["guarded"]
    gateway = await start_gateway(traced(raw, receiver))
    trace_id, _, traceparent = client_trace()

    # An OpenAI-dialect upstream: the gateway asks the safety model itself (a Together
    # upstream would check natively, and no stage would wait).
    reply = await post_chat(
        gateway,
        {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": CANARY}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}", "traceparent": traceparent},
    )
    server = await receiver.wait_for_server_span(trace_id)

    assert reply.status == 200
    children = receiver.children(server)
    assert names(children) == [
        "rate_limit",
        "safety_check",
        f"chat {OPENAI_MODEL}",
        "answer_safety_check",
    ]
    assert children[1].attributes == {"llm_gateway.safety.verdict": "safe"}
    assert children[3].attributes == {"llm_gateway.safety.verdict": "safe"}
    assert_nothing_secret(receiver)


async def test_a_long_tracestate_is_passed_on_cut_to_whole_members_within_512(
    start_gateway: StartGateway, upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    gateway = await start_gateway(traced(config_dict(upstream.url), receiver))
    trace_id, _, traceparent = client_trace()
    members = [f"vendor{i:02d}=value-{i:02d}-{'x' * 12}" for i in range(30)]  # 30 chars each

    reply = await post_chat(
        gateway,
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={
            "Authorization": f"Bearer {TEAM_KEY}",
            "traceparent": traceparent,
            "tracestate": ",".join(members),
        },
    )
    await receiver.wait_for_server_span(trace_id)

    assert reply.status == 200
    sent = upstream.state.requests[-1].headers["tracestate"]
    # 16 members of 30 characters and their commas: 495; a 17th would make 526.
    assert sent == ",".join(members[:16])


async def test_the_ratio_can_decide_for_a_clients_sampled_trace_too(
    upstream: RunningUpstream, receiver: OtlpReceiver
) -> None:
    raw = traced(config_dict(upstream.url), receiver, sample_ratio=0, follow_client_sampling=False)
    gateway = await own_gateway(raw)
    trace_id, _, traceparent = client_trace()
    try:
        reply = await post_chat(
            gateway,
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {TEAM_KEY}", "traceparent": traceparent},
        )
        assert reply.status == 200
    finally:
        await gateway.server.close()  # sends whatever it still holds

    assert receiver.spans == []  # the client asked for it; the ratio (0) said no
    (sent,) = sent_traceparents(upstream)
    assert sent.startswith(f"00-{trace_id}-") and not sampled(sent)  # continued all the same
