"""What a reload cannot apply is named, field by field (and no value is quoted: a Redis URL
may hold a password): `server.*`, `auth_failures.*`, the rate limiter's connection
settings, `tracing.*`, the audit file's path, the set of upstreams and an upstream's
address and pool size. Everything else a configuration says (teams, keys, models,
policies, limits, retries, health, an upstream's timeouts, dialect and pool timeout, what
to do when the audit trail cannot be written) reloads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.reload import restart_needed
from gateway.stages.auth import hash_key
from tests.conftest import MODEL, unit_config

Change = Callable[[dict[str, Any]], None]


def problems_after(change: Change) -> list[str]:
    return restart_needed(unit_config(), unit_config(change))


def set_in(*path: str, value: Any) -> Change:
    def change(raw: dict[str, Any]) -> None:
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value

    return change


def add_upstream(raw: dict[str, Any]) -> None:
    raw["upstreams"]["another"] = dict(raw["upstreams"]["fake"])


def remove_upstream(raw: dict[str, Any]) -> None:
    raw["models"]["gpt-4o-mini"]["upstreams"] = [{"upstream": "fake"}]
    del raw["upstreams"]["fake-openai"]


NEEDS_A_RESTART: dict[str, tuple[Change, str]] = {
    "port": (set_in("server", "port", value=9999), "server.port"),
    "log level": (set_in("server", "log_level", value="warning"), "server.log_level"),
    "audit path": (set_in("audit", "path", value="/tmp/audit.jsonl"), "audit.path"),
    "redis url": (
        set_in("rate_limits", "redis_url", value="redis://:s3cret@127.0.0.1:1/0"),
        "rate_limits.redis_url",
    ),
    "key prefix": (set_in("rate_limits", "key_prefix", value="other"), "rate_limits.key_prefix"),
    "auth failures": (
        set_in("auth_failures", "max_failures", value=3),
        "auth_failures.max_failures",
    ),
    "tracing": (
        set_in("tracing", "endpoint", value="http://127.0.0.1:4318"),
        "tracing.endpoint",
    ),
    "new upstream": (add_upstream, "upstreams.another"),
    "removed upstream": (remove_upstream, "upstreams.fake-openai"),
    "base url": (
        set_in("upstreams", "fake", "base_url", value="http://127.0.0.1:10/v1"),
        "upstreams.fake.base_url",
    ),
    "pool size": (
        set_in("upstreams", "fake", "max_connections", value=7),
        "upstreams.fake.max_connections",
    ),
    "capacity": (
        set_in("upstreams", "fake", "max_in_flight", value=7),
        "upstreams.fake.max_in_flight",
    ),
}


@pytest.mark.parametrize("name", NEEDS_A_RESTART)
def test_a_setting_only_a_restart_applies_is_named(name: str) -> None:
    change, field = NEEDS_A_RESTART[name]

    [problem] = problems_after(change)

    assert problem.split(": ", 1)[0] == field
    assert "restart" in problem
    assert "s3cret" not in problem


def add_team(raw: dict[str, Any]) -> None:
    raw["teams"]["new"] = {"key_hashes": [hash_key("gw-new-team-key-0001")], "models": ["*"]}


RELOADS: dict[str, Change] = {
    "a team": add_team,
    "a key": set_in("teams", "team-a", "key_hashes", value=[hash_key("gw-rotated-key-001")]),
    "limits": set_in("teams", "team-a", "limits", value={"requests_per_minute": 5}),
    "a model's upstream name": set_in(
        "models", MODEL, "upstreams", value=[{"upstream": "fake", "model": "other"}]
    ),
    "a model's price": set_in(
        "models", MODEL, "price", value={"input_per_million": 1, "output_per_million": 2}
    ),
    "a policy": set_in("policies", "p", value={"caps": {"n": {"limit": 1}}}),
    "retries": set_in("retries", "max_attempts", value=1),
    "health": set_in("health", "consecutive_failures", value=2),
    "failure mode": set_in("rate_limits", "failure_mode", value="closed"),
    "audit on failure": set_in("audit", "on_failure", value="refuse"),
    "timeouts": set_in("upstreams", "fake", "timeouts", value={"first_byte": 1}),
    "pool timeout": set_in("upstreams", "fake", "pool_timeout", value=0.5),
    "dialect": set_in("upstreams", "fake", "dialect", value="vllm"),
}


@pytest.mark.parametrize("name", RELOADS)
def test_everything_else_reloads(name: str) -> None:
    assert problems_after(RELOADS[name]) == []


def test_every_such_setting_is_named_at_once() -> None:
    def many(raw: dict[str, Any]) -> None:
        for change, _ in NEEDS_A_RESTART.values():
            change(raw)

    fields = [problem.split(": ", 1)[0] for problem in problems_after(many)]

    assert sorted(fields) == sorted(field for _, field in NEEDS_A_RESTART.values())
