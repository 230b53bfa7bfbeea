"""An audit file removed mid-run while its directory cannot be written (a real read-only
mount over a tmpfs: root ignores permission bits, not a read-only mount): the gateway sees
the removal before writing the next line, cannot create the file again, and with
`audit.on_failure: refuse` answers 503 `audit_unavailable` with nothing sent upstream or
to the safety model, counting `removed` once and `permission` per line lost. Once the
directory is writable again, the file is created again and requests are served."""

from __future__ import annotations

from tests.conftest import RunningUpstream, StartGateway, auth, metric, post_chat
from tests.integration.audit_trail import (
    AVAILABLE,
    FAILURES,
    audited,
    guarded_chat,
    guarded_config,
)
from tests.small_filesystem import SmallFilesystem


async def test_the_file_removed_and_not_creatable_refuses_until_it_can_be(
    start_gateway: StartGateway,
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    small_filesystem: SmallFilesystem,
) -> None:
    guard, path = spare_upstream, small_filesystem.directory / "audit.jsonl"
    gateway = await start_gateway(guarded_config(upstream, guard, path, "refuse"))
    assert (await post_chat(gateway, guarded_chat())).status == 200
    path.unlink()
    small_filesystem.make_read_only()
    upstream_calls, guard_calls = len(upstream.state.requests), len(guard.state.requests)

    lost = await post_chat(gateway, guarded_chat())  # its line finds the file gone
    refused = await post_chat(gateway, guarded_chat())

    assert lost.status == 200  # served before its line was due
    assert refused.status == 503
    assert refused.json()["error"]["code"] == "audit_unavailable"
    assert len(upstream.state.requests) == upstream_calls + 1
    assert len(guard.state.requests) == guard_calls + 1
    assert await metric(gateway, FAILURES, reason="removed") == 1
    assert await metric(gateway, FAILURES, reason="permission") == 2
    assert await metric(gateway, AVAILABLE) == 0
    assert [r["path"] for r in gateway.log_records("audit_file_removed")] == [str(path)]
    assert [r["error"] for r in gateway.log_records("audit_unavailable")] == ["EROFS"]

    small_filesystem.make_writable()
    probe = await post_chat(gateway, guarded_chat(), {**auth(), "x-request-id": "probe"})
    served = await post_chat(gateway, guarded_chat(), {**auth(), "x-request-id": "served"})

    assert (probe.status, served.status) == (503, 200)
    assert [(r["request_id"], r["status"]) for r in audited(path)] == [
        ("probe", 503),
        ("served", 200),
    ]
