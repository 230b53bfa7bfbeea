"""A reload (the hook `reload(app)`, which SIGHUP calls) puts the file in force for the
next request when it is valid and needs no restart, and nothing of it otherwise: an
invalid file is refused with every problem worded as check-config words them, a file that
changes a restart-only setting is refused whole, an unchanged file changes nothing.
Generation and file hash are shown by /readyz and the metrics; reloads run one at a
time; a generation no request runs on any more is freed."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.appkeys import PATHS
from gateway.cli import main
from gateway.reload import reload
from gateway.stages.auth import hash_key
from tests.conftest import RunningUpstream, auth, chat_body, config_dict, metric, post_chat
from tests.file_gateway import FileGateway, file_gateway

NEW_KEY = "gw-reload-hook-new-team-key-00000001"


def with_new_team(raw: dict[str, Any]) -> dict[str, Any]:
    raw["teams"]["new"] = {"key_hashes": [hash_key(NEW_KEY)], "models": ["*"]}
    return raw


async def readyz(gateway: FileGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/readyz") as resp:
        answer: dict[str, Any] = await resp.json()
        return answer


async def status_with(gateway: FileGateway, key: str) -> int:
    return (await post_chat(gateway, chat_body(), auth(key))).status


async def test_a_valid_file_is_in_force_for_the_next_request(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = config_dict(upstream.url)
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        assert await status_with(gateway, NEW_KEY) == 401
        first = await readyz(gateway)

        result = await gateway.reload_with(with_new_team(raw))

        assert (result.result, result.generation) == ("ok", 2)
        assert await status_with(gateway, NEW_KEY) == 200
        ready = await readyz(gateway)
        assert (first["config_generation"], ready["config_generation"]) == (1, 2)
        assert ready["config_sha256"] == hashlib.sha256(gateway.path.read_bytes()).hexdigest()
        assert ready["config_sha256"] != first["config_sha256"]
        assert ready["config_last_reload"] == "ok"
        assert await metric(gateway, "llm_gateway_config_generation") == 2
        assert await metric(gateway, "llm_gateway_config_reloads_total", result="ok") == 1
        [line] = gateway.log_records("config_reloaded")
        assert (line["generation"], line["previous_generation"]) == (2, 1)


async def test_an_unchanged_file_changes_nothing(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with file_gateway(config_dict(upstream.url), tmp_path, monkeypatch) as gateway:
        before = gateway.app[PATHS].current

        result = await gateway.reload_with(config_dict(upstream.url))

        assert (result.result, result.generation) == ("unchanged", 1)
        assert gateway.app[PATHS].current is before
        assert await metric(gateway, "llm_gateway_config_reloads_total", result="unchanged") == 1


async def test_an_invalid_file_is_refused_with_every_problem_as_check_config_words_them(
    upstream: RunningUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = config_dict(upstream.url)
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        broken = with_new_team(config_dict(upstream.url))
        broken["teams"]["team-a"]["models"] = ["no-such-model", "nor-this-one"]
        broken["teams"]["team-b"]["policies"] = ["no-such-policy"]

        result = await gateway.reload_with(broken)
        assert main(["check-config", str(gateway.path)]) == 2

        checked = [line[2:] for line in capsys.readouterr().err.splitlines()[1:]]
        assert (result.result, result.generation) == ("invalid", 1)
        assert list(result.problems) == checked
        assert len(checked) == 3
        [line] = gateway.log_records("config_reload_refused")
        assert (line["result"], line["problems"]) == ("invalid", checked)
        # The old configuration is still the one in force.
        assert await status_with(gateway, NEW_KEY) == 401
        assert (await post_chat(gateway, chat_body())).status == 200
        ready = await readyz(gateway)
        assert (ready["config_generation"], ready["config_last_reload"]) == (1, "invalid")
        assert await metric(gateway, "llm_gateway_config_reloads_total", result="invalid") == 1


async def test_a_file_that_needs_a_restart_is_refused_whole(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with file_gateway(config_dict(upstream.url), tmp_path, monkeypatch) as gateway:
        changed = with_new_team(config_dict(upstream.url))
        changed["server"]["max_body_bytes"] = 4096

        result = await gateway.reload_with(changed)

        assert (result.result, result.generation) == ("restart_required", 1)
        assert [p.split(": ")[0] for p in result.problems] == ["server.max_body_bytes"]
        assert await status_with(gateway, NEW_KEY) == 401  # nothing of it applied
        [line] = gateway.log_records("config_reload_refused")
        assert line["result"] == "restart_required"


async def test_a_file_that_is_not_yaml_is_refused(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with file_gateway(config_dict(upstream.url), tmp_path, monkeypatch) as gateway:
        gateway.path.write_bytes(b"teams: [\n")

        result = await reload(gateway.app)

        assert (result.result, result.generation) == ("invalid", 1)
        assert "not valid YAML" in result.problems[0]
        assert (await post_chat(gateway, chat_body())).status == 200


async def test_reloads_run_one_at_a_time(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = config_dict(upstream.url)
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        gateway.path.write_text(yaml.safe_dump(with_new_team(raw)))

        results = await asyncio.gather(reload(gateway.app), reload(gateway.app))

        # The second read the file the first had put in force: nothing left to do.
        assert [(r.result, r.generation) for r in results] == [("ok", 2), ("unchanged", 2)]


async def test_a_generation_is_freed_once_no_request_runs_on_it(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = config_dict(upstream.url)
    async with file_gateway(raw, tmp_path, monkeypatch) as gateway:
        replaced = []
        for i in range(3):
            replaced.append(weakref.ref(gateway.app[PATHS].current))
            assert (await post_chat(gateway, chat_body(stream=i % 2 == 1))).status == 200
            raw["teams"]["team-a"]["limits"] = {"requests_per_minute": 100 - i}
            assert (await gateway.reload_with(raw)).result == "ok"
        await asyncio.sleep(0.05)  # the last request's server side ends
        gc.collect()

        assert [ref() for ref in replaced] == [None, None, None]
