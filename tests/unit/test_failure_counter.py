"""The in-process failure counter (the Redis script decides alike; the row-20 tests run
both): a window opens with an address's first failure; the failure past the limit turns it
into a block of block_ms from then, which later failures do not lengthen; then the address
starts afresh. Memory stays bounded however many addresses fail."""

from __future__ import annotations

from gateway.limiter.failures import FailureRule, MemoryFailureCounter

RULE = FailureRule(max_failures=3, window_ms=1_000, block_ms=5_000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_failure_past_the_limit_blocks_for_block_ms() -> None:
    clock = Clock()
    counter = MemoryFailureCounter(RULE, clock)

    counts = []
    for _ in range(3):
        counts.append(counter.record("a"))
        clock.now += 100
    blocking = counter.record("a")
    clock.now += 2_000
    later = counter.record("a")

    assert [(c.count, c.ttl_ms) for c in counts] == [(1, 1000), (2, 900), (3, 800)]
    assert (blocking.count, blocking.ttl_ms) == (4, 5_000)
    assert (later.count, later.ttl_ms) == (5, 3_000)  # not lengthened


def test_a_window_that_ends_below_the_limit_starts_afresh() -> None:
    clock = Clock()
    counter = MemoryFailureCounter(RULE, clock)
    counter.record("a")
    counter.record("a")
    clock.now += 1_000

    assert counter.record("a").count == 1
    assert counter.record("b").count == 1


def test_a_block_ends_after_block_ms() -> None:
    clock = Clock()
    counter = MemoryFailureCounter(RULE, clock)
    for _ in range(4):
        counter.record("a")
    clock.now += 5_000

    assert counter.record("a").count == 1


def test_memory_is_bounded_and_the_oldest_windows_go_first() -> None:
    clock = Clock()
    counter = MemoryFailureCounter(RULE, clock, max_tracked=5_000)

    for i in range(20_000):
        counter.record(f"address-{i}")
        assert len(counter) <= 5_000

    assert counter.record("address-19999").count == 2  # the newest are kept...
    assert counter.record("address-0").count == 1  # ...the oldest forgotten
