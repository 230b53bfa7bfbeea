"""`audit.on_failure` reloads: on a disk that fills up (a real 64 KB tmpfs), a gateway on
`continue` serves while its audit lines fail; after a reload to `refuse` it answers 503
`audit_unavailable`, after a reload back, it serves again. (`audit.path` is restart only.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.conftest import RunningUpstream, chat_body, post_chat
from tests.file_gateway import file_gateway
from tests.integration.audit_trail import guarded_config, serve_until_a_line_fails
from tests.small_filesystem import SmallFilesystem


async def test_a_reload_switches_between_serving_and_refusing(
    upstream: RunningUpstream,
    spare_upstream: RunningUpstream,
    small_filesystem: SmallFilesystem,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = small_filesystem.directory / "audit.jsonl"
    raw = guarded_config(upstream, spare_upstream, path, "continue")
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        small_filesystem.fill()
        await serve_until_a_line_fails(gateway)
        refusing = copy.deepcopy(raw)
        refusing["audit"]["on_failure"] = "refuse"

        assert (await gateway.reload_with(refusing)).result == "ok"
        refused = await post_chat(gateway, chat_body())
        assert (await gateway.reload_with(raw)).result == "ok"
        served = await post_chat(gateway, chat_body())
        moved = copy.deepcopy(raw)
        moved["audit"]["path"] = str(tmp_path / "elsewhere.jsonl")
        not_moved = await gateway.reload_with(moved)

    assert (refused.status, refused.json()["error"]["code"]) == (503, "audit_unavailable")
    assert served.status == 200
    assert (not_moved.result, not_moved.problems) == (
        "restart_required",
        ("audit.path: changes only with a restart",),
    )
