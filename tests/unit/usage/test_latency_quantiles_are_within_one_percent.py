"""The latency histogram's p50 and p95 (any quantile) are within 1% of the exact ones, the
latency at rank floor(q * (n - 1)) of the sorted latencies, whatever their distribution;
zeros are exact, values past the bounds are counted at them, and merging two histograms
is the same as one histogram of both."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from gateway.usage.latency import HIGHEST_MS, LOWEST_MS, RELATIVE_ERROR, LatencyHistogram

QUANTILES = (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0)


def exact(values: list[float], q: float) -> float:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def histogram_of(values: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    return histogram


def within_the_bound(estimate: float | None, value: float) -> bool:
    return estimate is not None and abs(estimate - value) <= RELATIVE_ERROR * value * (1 + 1e-9)


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda rng: rng.lognormvariate(6, 1.2),
    "uniform sub-millisecond": lambda rng: rng.uniform(0.001, 1),
    "heavy tail": lambda rng: rng.paretovariate(1.1) * 10,
    "two modes": lambda rng: rng.choice((rng.gauss(50, 5), rng.gauss(30_000, 2_000))),
    "audit resolution": lambda rng: round(rng.expovariate(1 / 200), 3) or 0.001,
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("count", [1, 2, 7, 1000, 50_000])
def test_every_quantile_is_within_one_percent_of_the_exact_one(name: str, count: int) -> None:
    rng = random.Random(f"{name}-{count}")
    values = [abs(DISTRIBUTIONS[name](rng)) for _ in range(count)]

    histogram = histogram_of(values)

    for q in QUANTILES:
        assert within_the_bound(histogram.quantile(q), exact(values, q)), q
    assert histogram.count == count


def test_values_on_bucket_edges_are_within_the_bound() -> None:
    gamma = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
    edges = [gamma**i for i in range(-300, 900, 7)]

    for edge in edges:
        for value in (edge, math.nextafter(edge, 0), math.nextafter(edge, math.inf)):
            assert within_the_bound(histogram_of([value]).quantile(0.5), value), value


def test_zeros_are_reported_exactly() -> None:
    histogram = histogram_of([0.0, 0.0, 0.0, 5.0])

    assert histogram.quantile(0.5) == 0.0
    assert within_the_bound(histogram.quantile(1.0), 5.0)


def test_values_past_the_bounds_are_counted_at_the_bounds() -> None:
    histogram = histogram_of([LOWEST_MS / 10, HIGHEST_MS * 10])

    assert within_the_bound(histogram.quantile(0.0), LOWEST_MS)
    assert within_the_bound(histogram.quantile(1.0), HIGHEST_MS)


def test_an_empty_histogram_has_no_quantile() -> None:
    assert LatencyHistogram().quantile(0.5) is None


def test_merging_two_histograms_is_one_histogram_of_both() -> None:
    rng = random.Random(3)
    first = [rng.lognormvariate(4, 1) for _ in range(5000)]
    second = [rng.lognormvariate(8, 0.5) for _ in range(3000)]

    merged = histogram_of(first)
    merged.merge(histogram_of(second))
    whole = histogram_of(first + second)

    assert merged.count == whole.count == 8000
    for q in QUANTILES:
        assert merged.quantile(q) == whole.quantile(q)
        assert within_the_bound(merged.quantile(q), exact(first + second, q))
