"""`audit.on_failure: refuse` on a disk that fills up (a real 64 KB tmpfs): once an audit
line cannot be written, API requests are answered 503 `audit_unavailable` in the OpenAI
shape, before anything is sent upstream or to the safety model; the refused requests are
still audited, and once space is freed the first line written (a refused request's) makes
the gateway serve, and audit, again."""

from __future__ import annotations

import aiohttp

from tests.conftest import (
    RunningUpstream,
    StartGateway,
    auth,
    metric,
    post_chat,
)
from tests.integration.audit_trail import (
    AVAILABLE,
    FAILURES,
    audited,
    guarded_chat,
    guarded_config,
    serve_until_a_line_fails,
)
from tests.small_filesystem import SmallFilesystem


async def test_requests_are_refused_before_any_upstream_call_until_space_is_freed(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    small_filesystem: SmallFilesystem,
) -> None:
    guard, path = spare_upstream, small_filesystem.directory / "audit.jsonl"
    gateway = await start_gateway(guarded_config(upstream, guard, path, "refuse"))
    assert (await post_chat(gateway, guarded_chat())).status == 200
    small_filesystem.fill()
    served = await serve_until_a_line_fails(gateway)
    upstream_calls, guard_calls = len(upstream.state.requests), len(guard.state.requests)
    assert guard_calls == upstream_calls == 1 + served  # each served request was checked

    refused = await post_chat(gateway, guarded_chat(), {**auth(), "x-request-id": "refused-1"})
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/v1/models", headers=auth()) as models,
    ):
        models_status, models_body = models.status, await models.json()

    assert refused.status == 503
    assert refused.json() == {
        "error": {
            "message": "The gateway cannot write its audit trail and does not serve requests "
            "it cannot audit; retry later.",
            "type": "service_unavailable_error",
            "param": None,
            "code": "audit_unavailable",
        }
    }
    assert {k.lower(): v for k, v in refused.headers.items()}["x-request-id"] == "refused-1"
    assert (models_status, models_body["error"]["code"]) == (503, "audit_unavailable")
    assert len(upstream.state.requests) == upstream_calls  # nothing sent upstream
    assert len(guard.state.requests) == guard_calls  # nor to the safety model
    assert await metric(gateway, AVAILABLE) == 0
    assert await metric(gateway, FAILURES, reason="no_space") == 3  # the served one's, two refused
    assert await metric(gateway, "llm_gateway_requests_total", code="503") == 2

    small_filesystem.free()
    probe = await post_chat(gateway, guarded_chat(), {**auth(), "x-request-id": "probe"})
    after = await post_chat(gateway, guarded_chat(), {**auth(), "x-request-id": "after"})

    assert probe.status == 503  # refused: the trail was unavailable; its line brings it back
    assert after.status == 200
    assert await metric(gateway, AVAILABLE) == 1
    records = audited(path)
    # Every line but the three lost, each whole: the first request's, those served until
    # the disk was full, the probe's and the last one's.
    assert len(records) == 1 + (served - 1) + 2
    assert [(r["request_id"], r["status"]) for r in records[-2:]] == [
        ("probe", 503),
        ("after", 200),
    ]
    assert len(upstream.state.requests) == upstream_calls + 1
    # Logged once for the failing spell, and once when it ended.
    assert [r["reason"] for r in gateway.log_records("audit_unavailable")] == ["no_space"]
    assert len(gateway.log_records("audit_available_again")) == 1
