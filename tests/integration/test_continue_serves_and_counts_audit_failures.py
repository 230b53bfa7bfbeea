"""`audit.on_failure: continue` (the default) on a disk that fills up (a real 64 KB tmpfs):
requests are served while their audit lines cannot be written, and each lost line is
counted (`llm_gateway_audit_write_failures_total{reason="no_space"}`, with
`llm_gateway_audit_available` 0). Requests under HIPAA are refused 503
`audit_unavailable` whatever on_failure says, those of a team whose policy forces it and
those that ask for it alike, before anything is sent upstream."""

from __future__ import annotations

from tests.conftest import (
    OTHER_TEAM_KEY,
    OTHER_TEAM_MODEL,
    RunningUpstream,
    StartGateway,
    auth,
    chat_body,
    metric,
    post_chat,
)
from tests.integration.audit_trail import (
    AVAILABLE,
    FAILURES,
    audited,
    guarded_config,
    serve_until_a_line_fails,
)
from tests.small_filesystem import SmallFilesystem


async def test_requests_are_served_and_lost_lines_counted_but_hipaa_ones_refused(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    small_filesystem: SmallFilesystem,
) -> None:
    path = small_filesystem.directory / "audit.jsonl"
    raw = guarded_config(upstream, spare_upstream, path, "continue")
    raw["policies"]["hipaa"] = {"compliance": {"force": "hipaa"}}
    raw["teams"]["team-b"]["policies"] = ["hipaa"]
    gateway = await start_gateway(raw)
    small_filesystem.fill()
    await serve_until_a_line_fails(gateway)
    calls = len(upstream.state.requests)

    served = [await post_chat(gateway, chat_body()) for _ in range(3)]
    asked_hipaa = await post_chat(gateway, chat_body(compliance="hipaa"))
    forced_hipaa = await post_chat(gateway, chat_body(model=OTHER_TEAM_MODEL), auth(OTHER_TEAM_KEY))

    assert [reply.status for reply in served] == [200, 200, 200]
    for refused in (asked_hipaa, forced_hipaa):
        assert refused.status == 503
        assert refused.json()["error"]["code"] == "audit_unavailable"
    assert len(upstream.state.requests) == calls + 3  # the HIPAA ones were never sent
    assert await metric(gateway, FAILURES, reason="no_space") == 1 + 3 + 2
    assert await metric(gateway, AVAILABLE) == 0

    small_filesystem.free()
    assert (await post_chat(gateway, chat_body())).status == 200
    assert await metric(gateway, AVAILABLE) == 1
    assert audited(path)[-1]["status"] == 200
