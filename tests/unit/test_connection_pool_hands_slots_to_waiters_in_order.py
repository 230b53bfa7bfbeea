"""The gateway's connection pool per upstream (`upstream.pool`): at most `limit` slots in
use; a request that finds none waits, first come first served, until a slot is handed to
it or its time runs out; a waiter that gives up, even as a slot is handed to it, leaks
nothing."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.upstream.pool import ConnectionPool, PoolTimeout


def soon(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_slots_go_to_waiters_in_the_order_they_came() -> None:
    pool = ConnectionPool(limit=1, timeout=5)
    assert pool.try_acquire() and not pool.try_acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await pool.acquire(soon(5))
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        pool.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)

    assert order == [0, 1, 2]
    assert pool.in_use == 1  # the last waiter holds the one slot
    pool.release()
    assert (pool.in_use, pool.has_free) == (0, True)


async def test_a_wait_that_runs_out_raises_and_holds_nothing() -> None:
    pool = ConnectionPool(limit=1, timeout=5)
    assert pool.try_acquire()

    with pytest.raises(PoolTimeout):
        await pool.acquire(soon(0.05))

    pool.release()
    assert (pool.in_use, pool.has_free) == (0, True)


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_the_slot_on() -> None:
    pool = ConnectionPool(limit=1, timeout=5)
    assert pool.try_acquire()
    leaving = asyncio.create_task(pool.acquire(soon(5)))
    staying = asyncio.create_task(pool.acquire(soon(5)))
    await asyncio.sleep(0)

    pool.release()  # handed to `leaving`...
    leaving.cancel()  # ...which is cancelled before it could resume
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    await staying

    assert pool.in_use == 1  # the slot went on to `staying`, not lost, not doubled
    pool.release()
    assert (pool.in_use, pool.has_free) == (0, True)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    pool = ConnectionPool(limit=1, timeout=5)
    assert pool.try_acquire()
    waiter = asyncio.create_task(pool.acquire(soon(5)))
    await asyncio.sleep(0)

    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    pool.release()

    assert (pool.in_use, pool.has_free) == (0, True)
