"""Passive health and balancing, with a fake clock."""

from __future__ import annotations

import random
from typing import Any

from gateway.config import HealthConfig
from gateway.upstream.balance import Balancer
from gateway.upstream.health import HealthBook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock, k: int = 3) -> HealthBook:
    config = HealthConfig(consecutive_failures=k, base_ejection_s=10, max_ejection_s=35)
    return HealthBook(config, {"m": ["a", "b"], "solo": ["c"]}, clock)


def test_k_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    clock = Clock()
    health = book(clock)

    assert not health.record_failure("a", clock.now) and not health.record_failure("a", clock.now)
    health.record_success("a", clock.now)
    assert not health.record_failure("a", clock.now) and not health.record_failure("a", clock.now)
    assert health.record_failure("a", clock.now)
    assert not health.available("a")


def test_cool_down_doubles_up_to_the_cap_and_probation_decides_at_once() -> None:
    clock = Clock()
    health = book(clock)
    for _ in range(3):
        health.record_failure("a", clock.now)

    cool_downs = []
    for _ in range(4):
        cool_downs.append(round(health.state["a"].ejected_until - clock.now, 3))
        clock.now = health.state["a"].ejected_until  # back on probation
        assert health.available("a")
        assert health.record_failure("a", clock.now)  # one failed probe ejects again

    assert cool_downs == [10, 20, 35, 35]
    clock.now = health.state["a"].ejected_until
    health.record_success("a", clock.now)
    assert health.snapshot()["a"]["state"] == "healthy"
    assert health.state["a"].ejections == 0


def test_the_only_upstream_of_a_model_is_never_ejected() -> None:
    clock = Clock()
    health = book(clock, k=1)

    assert not health.record_failure("c", clock.now)
    assert health.available("c")


def test_the_last_available_upstream_stays_when_its_sibling_is_out() -> None:
    clock = Clock()
    health = book(clock, k=1)

    assert health.record_failure("a", clock.now)
    assert not health.record_failure("b", clock.now)
    assert health.available("b")


def test_balancer_prefers_the_less_loaded_of_two_and_skips_ejected_and_tried() -> None:
    from gateway.config import parse_config
    from gateway.stages.auth import hash_key
    from gateway.stages.route import Router

    raw: dict[str, Any] = {
        "upstreams": {
            "a": {"base_url": "http://127.0.0.1:1/v1"},
            "b": {"base_url": "http://127.0.0.1:2/v1"},
        },
        "models": {"m": {"upstreams": [{"upstream": "a"}, {"upstream": "b"}]}},
        "teams": {"t": {"key_hashes": [hash_key("k")], "models": ["*"]}},
    }
    route = Router(parse_config(raw, environ={})).resolve("t", "m")
    clock = Clock()
    health = HealthBook(HealthConfig(consecutive_failures=1), {"m": ["a", "b"]}, clock)
    balancer = Balancer(health, random.Random(7))

    health.state["a"].outstanding = 5
    picks = [balancer.pick(route, set()).upstream_name for _ in range(1000)]
    assert 700 <= picks.count("b") <= 800  # "a" wins only when both draws are "a": 1/4

    assert {balancer.pick(route, {"b"}).upstream_name for _ in range(20)} == {"a"}
    health.record_failure("b", clock.now)
    assert {balancer.pick(route, set()).upstream_name for _ in range(20)} == {"a"}


def test_failures_of_attempts_sent_before_the_cool_down_ended_do_not_eject_again() -> None:
    clock = Clock()
    health = book(clock)
    sent = clock.now  # a burst of attempts, all on their way at once
    clock.now += 1
    ejections = [health.record_failure("a", sent) for _ in range(12)]

    assert ejections.count(True) == 1  # one incident, one ejection
    assert health.state["a"].ejected_until - clock.now == 10  # the base cool-down
    retried_while_out = clock.now + 5
    assert not any(health.record_failure("a", retried_while_out) for _ in range(12))
    health.record_success("a", sent)
    assert not health.available("a")  # nor does a late success of the burst restore it
    clock.now = health.state["a"].ejected_until
    assert health.record_failure("a", clock.now)  # a probe sent after it: ejected again
