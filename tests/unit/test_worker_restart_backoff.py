"""A worker that dies is replaced at once; while its replacements keep dying within
STABLE_S of their start, each waits twice as long as the one before, from 0.25 s up to
30 s, so that a worker that cannot run does not turn the parent into a fork loop."""

from __future__ import annotations

from gateway.supervisor import MAX_BACKOFF_S, restart_delay


def test_restart_delays_double_from_a_quarter_second_up_to_thirty_seconds() -> None:
    delays = [restart_delay(deaths) for deaths in range(1, 12)]

    assert delays == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert MAX_BACKOFF_S == 30.0
