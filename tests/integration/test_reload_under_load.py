"""Hot reload under load, on a real gateway process: reloaded by SIGHUP 20 times while
several clients keep whole answers and streams in flight. Each reload changes the
configuration (a new team with a new key and a new policy file, a lowered limit) and is
confirmed by the generation /readyz shows; right after it, the new key works, the new
policy applies and the lowered limit is the one answered. Not one request fails. An
invalid file with several problems, sent in the middle, leaves the configuration in force
and logs every problem, as check-config words them. A stream that started before a reload
that removed its team's key and renamed its model's upstream model finishes, under the
generation it started with, at the upstream model it started with."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ConfigError, read_config_file
from gateway.stages.auth import hash_key
from gateway.testing.fake_upstream import Behavior
from tests.conftest import (
    MODEL,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    RunningUpstream,
    auth,
    chat_body,
    config_dict,
)
from tests.gateway_process import gateway_process

RELOADS = 20
INVALID_AFTER = 10  # the invalid file is sent after this many reloads
SNAPSHOT_AT = 5  # the reload that removes the streaming team and renames the model
CLIENTS = 6
STEADY_KEY = "gw-reload-steady-team-key-000000000001"
SHRINKING_KEY = "gw-reload-shrinking-team-key-00000000002"
LEAVING_KEY = "gw-reload-leaving-team-key-000000000003"
RENAMED = "renamed-model"
# 150 events 20 ms apart: 3 s, far longer than a reload takes to be confirmed.
LONG_STREAM_WORDS = 150
# More words than any new team's max_tokens cap (its number): the answer shows the cap.
CAPPED_PROMPT = " ".join(f"w{i}" for i in range(30))


def new_key(i: int) -> str:
    return f"gw-reload-new-team-key-{i:04d}-abcdefabcdef"


def base_config(upstream_url: str) -> dict[str, Any]:
    raw = config_dict(upstream_url, log_level="info")
    raw["policies_dir"] = "policies"
    raw["models"][RENAMED] = {"upstreams": [{"upstream": "fake", "model": "fake/old"}]}
    raw["teams"] = {
        "steady": {"key_hashes": [hash_key(STEADY_KEY)], "models": ["*"]},
        "shrinking": {
            "key_hashes": [hash_key(SHRINKING_KEY)],
            "models": [MODEL],
            "limits": {"requests_per_minute": 1000},
        },
        "leaving": {"key_hashes": [hash_key(LEAVING_KEY)], "models": [RENAMED]},
    }
    return raw


def change(raw: dict[str, Any], i: int, policies: Path) -> None:
    """Reload number `i`'s changes: team new-i (its key, its policy cap-i), a lower limit."""
    (policies / f"cap-{i}.yaml").write_text(
        yaml.safe_dump({"caps": {"max_tokens": {"limit": i, "action": "clamp"}}})
    )
    raw["teams"][f"new-{i}"] = {
        "key_hashes": [hash_key(new_key(i))],
        "models": [MODEL],
        "policies": [f"cap-{i}"],
    }
    raw["teams"]["shrinking"]["limits"]["requests_per_minute"] = 1000 - 10 * i
    if i == SNAPSHOT_AT:
        del raw["teams"]["leaving"]
        raw["models"][RENAMED]["upstreams"][0]["model"] = "fake/new"


def invalid_version(raw: dict[str, Any]) -> dict[str, Any]:
    """The configuration in force with three problems and a valid new team."""
    broken = copy.deepcopy(raw)
    broken["server"]["prot"] = 8081
    broken["teams"]["broken"] = {
        "key_hashes": ["not-a-hash"],
        "models": [MODEL],
        "limits": {"requests_per_minute": 0},
    }
    broken["teams"]["would-be"] = {"key_hashes": [hash_key("gw-never-valid-0000")], "models": ["*"]}
    return broken


class Load:
    """Clients that keep requests in flight with a key no reload touches, alternating
    whole answers and streams; they count what they sent and what failed."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self.stop = asyncio.Event()
        self.in_flight = 0
        self.sent = 0
        self.failures: list[str] = []

    async def client(self, number: int) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            stream = turn % 2 == 0
            body = chat_body(stream=stream, messages=[{"role": "user", "content": "a b c d e"}])
            self.in_flight += 1
            self.sent += 1
            try:
                async with self._session.post(
                    f"{self._url}/v1/chat/completions", json=body, headers=auth(STEADY_KEY)
                ) as resp:
                    data = await resp.read()
                if resp.status != 200 or (stream and not data.endswith(b"data: [DONE]\n\n")):
                    self.failures.append(f"client {number}: {resp.status} {data[:200]!r}")
            except aiohttp.ClientError as exc:
                self.failures.append(f"client {number}: {exc!r}")
            finally:
                self.in_flight -= 1


async def readyz(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/readyz") as resp:
        answer: dict[str, Any] = await resp.json()
        return answer


async def until_readyz(
    session: aiohttp.ClientSession, url: str, field: str, value: object
) -> dict[str, Any]:
    for _ in range(1000):  # 20 s at most, on a loaded machine
        ready = await readyz(session, url)
        if ready[field] == value:
            return ready
        await asyncio.sleep(0.02)
    raise AssertionError(f"/readyz never showed {field}={value!r}: {ready}")


async def post(
    session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], Any]:
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=auth(key)) as resp:
        return resp.status, dict(resp.headers), await resp.json()


class LongStream:
    """A stream of the leaving team, read event by event."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.events = 0
        self.body = b""
        self.started = asyncio.Event()
        words = " ".join(f"s{i}" for i in range(LONG_STREAM_WORDS))
        body = chat_body(model=RENAMED, stream=True, messages=[{"role": "user", "content": words}])
        self.task = asyncio.create_task(self._read(session, url, body))

    async def _read(self, session: aiohttp.ClientSession, url: str, body: Any) -> int:
        headers = {**auth(LEAVING_KEY), "x-request-id": "snapshot-stream"}
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            async for line in resp.content:
                self.body += line
                if line.startswith(b"data: {"):
                    self.events += 1
                    self.started.set()
            return resp.status


async def test_twenty_reloads_under_load_fail_no_request(
    upstream: RunningUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.state.default = Behavior(delay=0.02)  # streams last a while
    policies = tmp_path / "policies"
    policies.mkdir()
    raw = base_config(upstream.url)
    with gateway_process(tmp_path, upstream.url, raw=raw) as gateway:
        async with aiohttp.ClientSession() as session:
            load = Load(session, gateway.url)
            clients = [asyncio.create_task(load.client(n)) for n in range(CLIENTS)]
            in_flight_at_signal: list[int] = []
            long_stream: LongStream | None = None
            events_at_confirmation = 0

            async def reload_with(config: dict[str, Any]) -> None:
                gateway.config.write_text(yaml.safe_dump(config))
                for _ in range(500):  # the signal goes out while requests are in flight
                    if load.in_flight:
                        break
                    await asyncio.sleep(0.01)
                in_flight_at_signal.append(load.in_flight)
                gateway.process.send_signal(signal.SIGHUP)

            for i in range(1, RELOADS + 1):
                if i == SNAPSHOT_AT:
                    long_stream = LongStream(session, gateway.url)
                    await asyncio.wait_for(long_stream.started.wait(), 20)
                change(raw, i, policies)
                await reload_with(raw)
                ready = await until_readyz(session, gateway.url, "config_generation", i + 1)
                assert ready["config_last_reload"] == "ok"
                if long_stream is not None and i == SNAPSHOT_AT:
                    events_at_confirmation = long_stream.events

                # Right after the reload is confirmed: the new key, its policy, the limit.
                body = chat_body(
                    max_tokens=50, messages=[{"role": "user", "content": CAPPED_PROMPT}]
                )
                status, headers, answer = await post(session, gateway.url, new_key(i), body)
                assert status == 200, answer
                assert headers["x-gateway-clamped-params"] == "max_tokens"
                assert answer["usage"]["completion_tokens"] == i
                status, headers, _ = await post(session, gateway.url, SHRINKING_KEY, chat_body())
                assert (status, headers["x-ratelimit-limit-requests"]) == (200, str(1000 - 10 * i))

                if i == SNAPSHOT_AT:
                    status, _, _ = await post(
                        session, gateway.url, LEAVING_KEY, chat_body(model=RENAMED)
                    )
                    assert status == 401  # the key is gone for new requests...
                    status, _, _ = await post(
                        session, gateway.url, STEADY_KEY, chat_body(model=RENAMED)
                    )
                    assert status == 200  # ...and new requests go to the new upstream model

                if i == INVALID_AFTER:
                    broken = invalid_version(raw)
                    await reload_with(broken)
                    ready = await until_readyz(
                        session, gateway.url, "config_last_reload", "invalid"
                    )
                    assert ready["config_generation"] == i + 1  # the old one stays in force
                    status, _, _ = await post(
                        session, gateway.url, "gw-never-valid-0000", chat_body()
                    )
                    assert status == 401
                    status, _, _ = await post(session, gateway.url, new_key(i), chat_body())
                    assert status == 200
                    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
                    with pytest.raises(ConfigError) as check_config:
                        read_config_file(gateway.config)
                    # Put back the file in force, as an operator would.
                    gateway.config.write_text(yaml.safe_dump(raw))

            assert long_stream is not None
            stream_status = await asyncio.wait_for(long_stream.task, 30)
            load.stop.set()
            await asyncio.gather(*clients)
            reloads = await reload_counts(session, gateway.url)
        exit_code = gateway.stop()
        refused = gateway.records("config_reload_refused")
        reloaded = gateway.records("config_reloaded")

    assert load.failures == []
    assert load.sent >= 2 * RELOADS  # the load ran throughout, not just at the start
    assert len(in_flight_at_signal) == RELOADS + 1
    assert min(in_flight_at_signal) >= 1  # every reload happened with requests in flight
    assert reloads == {"ok": RELOADS, "invalid": 1, "generation": RELOADS + 1}
    assert [r["generation"] for r in reloaded] == list(range(2, RELOADS + 2))

    # The invalid file: one line, every problem, worded as check-config words them.
    [line] = refused
    assert (line["result"], line["generation"]) == ("invalid", INVALID_AFTER + 1)
    assert line["problems"] == check_config.value.problems
    assert len(line["problems"]) == 3

    # The stream outlived the reload that removed its key and renamed its upstream model.
    assert stream_status == 200
    assert 0 < events_at_confirmation < LONG_STREAM_WORDS  # it was mid-way at the reload
    assert long_stream.body.endswith(b"data: [DONE]\n\n")
    words = " ".join(f"s{i}" for i in range(LONG_STREAM_WORDS))
    assert streamed_text(long_stream.body) == f"echo: {words}"
    sent_models = {
        r.headers.get("x-request-id"): r.body["model"]
        for r in upstream.state.requests
        if r.body["model"].startswith("fake/")
    }
    assert sent_models["snapshot-stream"] == "fake/old"
    assert "fake/new" in sent_models.values()
    assert exit_code == 0


async def reload_counts(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llm_gateway_config_reloads_total" and sample.value:
                counts[sample.labels["result"]] = sample.value
            if sample.name == "llm_gateway_config_generation":
                counts["generation"] = sample.value
    return counts


def streamed_text(body: bytes) -> str:
    """The content of a stream's chunks, joined."""
    text = ""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices:
                text += choices[0]["delta"].get("content") or ""
    return text
