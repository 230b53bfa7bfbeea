"""Settlement on both backends, the in-process one and the Redis script: a settlement sent
twice (its first call timed out) charges once, one whose admission never took effect
changes nothing, and an admission applies the settlements it carries before its checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config import RateLimitConfig
from gateway.limiter.base import (
    LimitCheck,
    LimiterBackend,
    LimitKind,
    Settlement,
    TokenAdjustment,
)
from gateway.limiter.memory import MemoryLimiter
from gateway.limiter.redis import RedisLimiter
from tests.conftest import RedisProcess

TEAM = "llmgw:{team-a}"
TICKETS = f"{TEAM}:tickets"
TOKENS = LimitCheck(LimitKind.TOKENS, f"{TEAM}:tpm", 1000, cost=600)
SLOTS = LimitCheck(LimitKind.CONCURRENCY, f"{TEAM}:inflight", 1)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[LimiterBackend]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    server: RedisProcess = request.getfixturevalue("redis_server")
    limiter = RedisLimiter(RateLimitConfig(redis_timeout_ms=2000), server.url)
    await limiter.warm_up()
    yield limiter
    await limiter.close()


def used(lease: str, tokens: int) -> Settlement:
    """The settlement of a request that reserved 600 tokens and used `tokens`."""
    adjustment = TokenAdjustment(TOKENS.key, TOKENS.limit, tokens - TOKENS.cost)
    return Settlement(lease, TICKETS, (SLOTS.key,), (adjustment,))


async def admit(backend: LimiterBackend, lease: str, *carried: Settlement) -> bool:
    results = await backend.admit(
        [TOKENS, SLOTS], lease, 60_000, ticket_key=TICKETS, settlements=carried
    )
    return all(result.allowed for result in results)


async def test_a_settlement_sent_twice_charges_once(backend: LimiterBackend) -> None:
    assert await admit(backend, "a")

    await backend.settle([used("a", 100)])
    await backend.settle([used("a", 100)])

    assert 900 <= await backend.remaining(TOKENS) <= 901  # a second of refill at most
    assert await backend.in_flight(SLOTS.key) == 0


async def test_settling_an_admission_that_never_took_effect_changes_nothing(
    backend: LimiterBackend,
) -> None:
    assert await admit(backend, "a")

    await backend.settle([used("refused-or-never-arrived", 0)])

    assert 400 <= await backend.remaining(TOKENS) <= 401
    assert await backend.in_flight(SLOTS.key) == 1


async def test_an_admission_applies_what_it_carries_before_its_checks(
    backend: LimiterBackend,
) -> None:
    assert await admit(backend, "a")
    assert not await admit(backend, "b")  # a's slot and reservation are still held

    assert await admit(backend, "c", used("a", 100))

    assert 300 <= await backend.remaining(TOKENS) <= 301  # a's 100, and c's 600
    assert await backend.in_flight(SLOTS.key) == 1
