"""How the Redis backend relates Redis's clock to its own: a lower bound on the offset,
from when Redis said it was and when its answer arrived, the tightest of recent ones."""

from __future__ import annotations

from gateway.limiter.redis import ClockOffset


def test_nothing_is_known_before_the_first_answer() -> None:
    assert ClockOffset().lower_bound() is None


def test_the_bound_is_the_tightest_answer_seen() -> None:
    offset = ClockOffset(window_s=30)

    offset.observe(redis_ms=5_000_100, received_s=100.0)  # offset >= 4_900_100
    offset.observe(redis_ms=5_000_150, received_s=100.3)  # a slow answer: >= 4_899_850
    offset.observe(redis_ms=5_000_500, received_s=100.4)  # a quick one: >= 4_900_100

    assert offset.lower_bound() == 4_900_100


def test_a_clock_that_stepped_back_is_followed_within_two_windows() -> None:
    offset = ClockOffset(window_s=30)
    offset.observe(redis_ms=5_000_100, received_s=100.0)

    offset.observe(redis_ms=4_000_200, received_s=131.0)  # Redis's clock went back 1000 s
    assert offset.lower_bound() == 4_900_100  # the previous window still counts
    offset.observe(redis_ms=4_000_250, received_s=162.0)
    assert offset.lower_bound() == 3_869_200
    offset.observe(redis_ms=4_100_250, received_s=300.0)  # long silence: only this one
    assert offset.lower_bound() == 3_800_250
