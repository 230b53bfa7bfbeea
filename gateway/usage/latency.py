"""Latency quantiles in fixed memory: a log-bucketed histogram (DDSketch's mapping, with
fixed bounds), whose size does not depend on how many latencies it holds.

Each bucket spans (g^(i-1), g^i] with g = (1 + a) / (1 - a) and is reported as
2 g^i / (g + 1), which is within a relative error `a` of every value in it; a = 1%. The
q-quantile is the latency at rank floor(q * (n - 1)) of the sorted latencies (the lower
one, no interpolation): the bucket that holds it is found by counting, so the reported
value is within 1% of it. Latencies of 0 are kept apart and reported exactly; the bounds
(0.001 ms, the audit line's resolution, to 10^8 ms, 28 hours) hold every latency the
gateway can write, and a value beyond them is counted at the nearest bound. Two
histograms merge exactly, by adding their counts.
"""

from __future__ import annotations

import math

# The largest relative error of a reported quantile.
RELATIVE_ERROR = 0.01
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_PER_LOG = 1 / math.log(_GAMMA)
# The smallest and largest latency told apart, in milliseconds.
LOWEST_MS = 0.001
HIGHEST_MS = 1e8
_FIRST = math.ceil(math.log(LOWEST_MS) * _PER_LOG)  # the bucket index of LOWEST_MS
_LAST = math.ceil(math.log(HIGHEST_MS) * _PER_LOG)
BUCKETS = _LAST - _FIRST + 1  # about 1,250: the histogram's whole size


class LatencyHistogram:
    """Counts of latencies (milliseconds) in BUCKETS fixed buckets, plus the zeros."""

    __slots__ = ("_counts", "_zeros", "count")

    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        self._zeros = 0
        self.count = 0

    def add(self, latency_ms: float) -> None:
        self.count += 1
        if latency_ms <= 0:
            self._zeros += 1
            return
        index = math.ceil(math.log(latency_ms) * _PER_LOG) - _FIRST
        if index < 0:
            index = 0
        elif index >= BUCKETS:
            index = BUCKETS - 1
        self._counts[index] += 1

    def merge(self, other: LatencyHistogram) -> None:
        self.count += other.count
        self._zeros += other._zeros
        pairs = zip(self._counts, other._counts, strict=True)
        self._counts = [mine + theirs for mine, theirs in pairs]

    def quantile(self, q: float) -> float | None:
        """The latency at rank floor(q * (count - 1)), within RELATIVE_ERROR; None when the
        histogram is empty."""
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index, count in enumerate(self._counts):
            seen += count
            if rank < seen:
                return 2 * _GAMMA ** (index + _FIRST) / (_GAMMA + 1)
        raise AssertionError("the counts add up to less than count")  # pragma: no cover
