"""The fair queue for upstream capacity (`gateway/upstream/capacity.py`): start-time fair
queueing over per-team queues. Driven here slot by slot, on a real event loop, so each
property is exact: who gets a freed slot, in which order, and what a leaving or refused
call leaves behind."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from gateway.routing import Claimant
from gateway.upstream.capacity import Capacity, Place, QueueRefused

FOREVER = 1e9


def place(team: str, share: float = 1.0, *, low: bool = False, depth: int = 1000) -> Place:
    return Place(Claimant(team, share=share, low_priority=low, max_depth=depth), "m")


async def queued(
    capacity: Capacity, *places: Place, upstreams: tuple[str, ...] = ("u",)
) -> list[asyncio.Task[str]]:
    """Each place waiting for a slot, in this order (each enqueued before the next)."""
    tasks = []
    for waiting in places:
        tasks.append(asyncio.create_task(capacity.take(waiting, upstreams, FOREVER)))
        await asyncio.sleep(0)
    return tasks


async def serve(capacity: Capacity, tasks: dict[asyncio.Task[str], str], slots: int) -> list[str]:
    """Frees `slots` slots one at a time; the team of each call that got one, in order."""
    served = []
    for _ in range(slots):
        capacity.release("u")
        await asyncio.sleep(0)
        done = [task for task in tasks if task.done()]
        assert len(done) == 1
        served.append(tasks.pop(done[0]))
    return served


async def test_a_free_slot_is_taken_at_once_and_a_full_upstream_makes_calls_wait() -> None:
    capacity = Capacity({"u": 2, "open": None})
    assert capacity.try_take("u") and capacity.try_take("u")
    assert not capacity.try_take("u")
    assert capacity.try_take("open")  # unbounded: never counted, never waits
    [waiting] = await queued(capacity, place("a"))
    assert not waiting.done()
    assert not capacity.has_free("u")

    capacity.release("u")  # handed to the waiting call, not back to the upstream
    assert await waiting == "u"
    assert capacity.in_flight["u"] == 2
    capacity.release("u")
    capacity.release("u")
    assert capacity.in_flight["u"] == 0


async def test_teams_with_work_waiting_are_served_in_proportion_to_their_shares() -> None:
    capacity = Capacity({"u": 1})
    assert capacity.try_take("u")
    tasks = {}
    for task, team in zip(
        await queued(
            capacity, *[place("a", 3) for _ in range(60)], *[place("b", 1) for _ in range(60)]
        ),
        ["a"] * 60 + ["b"] * 60,
        strict=True,
    ):
        tasks[task] = team

    served = Counter(await serve(capacity, tasks, 40))

    assert served == {"a": 30, "b": 10}
    for task in tasks:
        task.cancel()


async def test_a_team_that_was_idle_is_served_next_however_long_the_floods_line() -> None:
    capacity = Capacity({"u": 1})
    assert capacity.try_take("u")
    flood = {task: "a" for task in await queued(capacity, *[place("a") for _ in range(50)])}
    assert await serve(capacity, flood, 5) == ["a"] * 5

    [late] = await queued(capacity, place("b"))
    flood[late] = "b"
    assert await serve(capacity, flood, 1) == ["b"]  # ahead of 45 queued before it
    for task in flood:
        task.cancel()


async def test_low_priority_is_served_only_when_no_normal_call_waits() -> None:
    capacity = Capacity({"u": 1})
    assert capacity.try_take("u")
    tasks = {
        task: "low"
        for task in await queued(capacity, *[place("batch", low=True) for _ in range(3)])
    }
    tasks.update(
        {task: "normal" for task in await queued(capacity, *[place("web") for _ in range(3)])}
    )

    assert await serve(capacity, tasks, 6) == ["normal"] * 3 + ["low"] * 3


async def test_a_freed_slot_goes_only_to_a_call_that_may_use_that_upstream() -> None:
    capacity = Capacity({"hipaa": 1, "other": 1})
    assert capacity.try_take("hipaa") and capacity.try_take("other")
    [only_hipaa] = await queued(capacity, place("a"), upstreams=("hipaa",))
    [either] = await queued(capacity, place("b"), upstreams=("hipaa", "other"))

    capacity.release("other")  # the first in line may not use it: the second gets it
    await asyncio.sleep(0)
    assert either.done() and await either == "other"
    assert not only_hipaa.done()
    capacity.release("hipaa")
    assert await only_hipaa == "hipaa"


async def test_a_full_queue_refuses_at_once_and_a_wait_that_runs_out_is_refused() -> None:
    capacity = Capacity({"u": 1})
    assert capacity.try_take("u")
    held = await queued(capacity, place("a", depth=2), place("a", depth=2))

    with pytest.raises(QueueRefused) as full:
        await capacity.take(place("a", depth=2), ("u",), FOREVER)
    assert full.value.reason == "queue_full"
    loop = asyncio.get_running_loop()
    with pytest.raises(QueueRefused) as late:
        await capacity.take(place("b"), ("u",), loop.time() + 0.02)
    assert late.value.reason == "max_wait"
    assert capacity.depth("m", "b") == 0
    for task in held:
        task.cancel()


async def test_calls_that_leave_the_line_hold_nothing_and_cost_their_team_nothing() -> None:
    depths: Counter[tuple[str, str]] = Counter()
    capacity = Capacity({"u": 1}, lambda model, team, delta: depths.update({(model, team): delta}))
    assert capacity.try_take("u")
    leaving = await queued(capacity, *[place("a") for _ in range(200)])
    [b_first] = await queued(capacity, place("b"))
    for task in leaving:
        task.cancel()
    await asyncio.gather(*leaving, return_exceptions=True)
    assert capacity.depth("m", "a") == 0
    assert depths[("m", "a")] == 0

    # Team a's next call is not behind 200 calls it never made: it comes right after b.
    tasks = {b_first: "b"}
    tasks.update({task: "a" for task in await queued(capacity, place("a"))})
    tasks.update({task: "b" for task in await queued(capacity, place("b"))})
    assert await serve(capacity, tasks, 3) == ["b", "a", "b"]
    capacity.release("u")
    assert capacity.in_flight["u"] == 0


async def test_a_retry_keeps_its_place_ahead_of_later_calls() -> None:
    capacity = Capacity({"u": 1})
    assert capacity.try_take("u")
    first = place("a")
    [original] = await queued(capacity, first)
    capacity.release("u")
    assert await original == "u"  # served; its attempt fails and it comes back
    later = {task: "later" for task in await queued(capacity, *[place("a") for _ in range(3)])}
    [retry] = await queued(capacity, first)
    later[retry] = "retry"

    assert (await serve(capacity, later, 1)) == ["retry"]
    for task in later:
        task.cancel()


async def test_an_unbounded_or_free_candidate_is_taken_without_waiting() -> None:
    capacity = Capacity({"bounded": 1, "open": None})
    assert capacity.try_take("bounded")
    assert await capacity.take(place("a"), ("bounded", "open"), FOREVER) == "open"
    capacity.release("bounded")
    assert await capacity.take(place("a"), ("bounded",), FOREVER) == "bounded"
    assert capacity.depth("m", "a") == 0


async def test_a_release_that_finds_a_cancelled_waiter_passes_the_slot_on() -> None:
    capacity = Capacity({"u": 1})
    assert capacity.try_take("u")
    cancelled, next_in_line = await queued(capacity, place("a"), place("b"))
    cancelled.cancel()  # its future is cancelled now, its task has not run yet
    capacity.release("u")  # must not fail, nor lose the slot
    assert await next_in_line == "u"
    await asyncio.gather(cancelled, return_exceptions=True)
    capacity.release("u")
    assert capacity.in_flight["u"] == 0
    assert capacity.depth("m", "a") == capacity.depth("m", "b") == 0


async def test_a_slot_goes_to_a_later_call_of_a_queue_whose_first_may_not_use_it() -> None:
    capacity = Capacity({"hipaa": 1, "other": 1})
    assert capacity.try_take("hipaa") and capacity.try_take("other")
    [only_hipaa] = await queued(capacity, place("a"), upstreams=("hipaa",))
    [either] = await queued(capacity, place("a"), upstreams=("hipaa", "other"))

    capacity.release("other")
    await asyncio.sleep(0)
    assert either.done() and await either == "other"
    assert capacity.in_flight == {"hipaa": 1, "other": 1}
    only_hipaa.cancel()


async def test_virtual_time_is_per_model_so_other_models_do_not_push_a_newcomer_back() -> None:
    capacity = Capacity({"u1": 1, "u2": 1})
    assert capacity.try_take("u1") and capacity.try_take("u2")
    busy = [Place(Claimant("x"), "m1") for _ in range(50)]
    m1 = await queued(capacity, *busy, upstreams=("u1",))
    backlog = {
        task: "c"
        for task in await queued(
            capacity, *[Place(Claimant("c"), "m2") for _ in range(20)], upstreams=("u2",)
        )
    }
    for _ in range(49):  # m1 turns over fast: its virtual time runs ahead
        capacity.release("u1")
        await asyncio.sleep(0)
    [late] = await queued(capacity, Place(Claimant("d"), "m2"), upstreams=("u2",))
    backlog[late] = "d"
    order = []
    for _ in range(2):
        capacity.release("u2")
        await asyncio.sleep(0)
        done = [task for task in backlog if task.done()]
        order += [backlog.pop(task) for task in done]
    assert order == ["c", "d"]  # d right after the call in service's successor
    for task in [*m1, *backlog]:
        task.cancel()
